"""Kernel module selection from a fake modules.dep, the metapackage lookup and kernel ELF extraction."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest

from virtkit.errors import RejectedError
from virtkit.images import elf
from virtkit.images.kernel import (
    Module,
    closure,
    extract_vmlinux,
    image_package,
    load_conditions,
    load_order,
    module_bytes,
    module_name,
    parse_builtin,
    parse_modules_dep,
)

from .elfbuild import AARCH64, make_elf, pvh_kernel

MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/scsi_mod.ko:
kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko
"""
INDEX = parse_modules_dep(MODULES_DEP)


def _names(modules: list[Module]) -> list[str]:
    return [m.name for m in modules]


def test_module_names_are_canonical() -> None:
    assert module_name("kernel/crypto/crc32c-intel.ko.xz") == "crc32c_intel"
    assert module_name("kernel/drivers/block/virtio_blk.ko.zst") == "virtio_blk"
    assert module_name("virtio.ko") == "virtio"


def test_modules_dep_is_parsed_with_paths_and_dependencies() -> None:
    assert INDEX["virtio_blk"].path == "kernel/drivers/block/virtio_blk.ko.xz"
    assert INDEX["virtio_rng"].deps == ("virtio", "virtio_ring")
    assert INDEX["ext4"].deps == ("crc16", "mbcache", "jbd2")
    assert parse_modules_dep("garbage\n\n: x\n") == {}


def test_load_order_puts_dependencies_first_without_duplicates() -> None:
    order = _names(load_order(INDEX, set(), ["virtio_pci", "virtio_blk", "ext4"]))
    assert sorted(order) == sorted(set(order))
    assert set(order) == {"virtio_pci", "virtio_pci_modern_dev", "virtio", "virtio_ring", "virtio_blk",
                          "ext4", "crc16", "mbcache", "jbd2"}
    for module in order:
        for dep in INDEX[module].deps:
            assert order.index(dep) < order.index(module), f"{dep} must load before {module}"


def test_builtin_modules_satisfy_requirements_and_are_not_loaded() -> None:
    builtin = parse_builtin("kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n"
                            "kernel/drivers/net/virtio_net.ko\n")
    order = _names(load_order(INDEX, builtin, ["virtio_mmio", "virtio_net"]))
    assert order == ["virtio_mmio"]


def test_missing_required_module_is_an_error_optional_is_skipped() -> None:
    with pytest.raises(RejectedError, match="no module virtio_console"):
        load_order(INDEX, set(), ["virtio_console"])
    optional = _names(load_order(INDEX, set(), [], ["e1000", "virtio-rng"]))
    assert optional == ["virtio", "virtio_ring", "virtio_rng"]


def test_missing_dependency_and_cycles_are_reported() -> None:
    broken = parse_modules_dep("a.ko: b.ko\n")
    with pytest.raises(RejectedError, match=r"module b \(needed by a\) is missing"):
        load_order(broken, set(), ["a"])
    cyclic = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(RejectedError, match="cycle"):
        load_order(cyclic, set(), ["a"])


def test_closure_follows_dependencies() -> None:
    assert closure(INDEX, "ahci") == {"ahci", "libata", "scsi_mod"}
    assert closure(INDEX, "nonexistent") == set()


def test_conditions_merge_and_unconditional_wins() -> None:
    when = load_conditions(INDEX, {
        "virtio_mmio": (),
        "virtio_blk": ("virtio:2",),
        "ext4": ("virtio:2", "pciclass:0106"),
        "ahci": ("pciclass:0106",),
        "sd_mod": ("pciclass:0106", "pciclass:0101"),
    })
    assert when["virtio"] == () and when["virtio_ring"] == ()  # also needed by virtio_mmio (always)
    assert when["virtio_blk"] == ("virtio:2",)
    assert when["jbd2"] == ("virtio:2", "pciclass:0106")
    assert when["scsi_mod"] == ("pciclass:0106", "pciclass:0101")
    assert when["libata"] == ("pciclass:0106",)


def test_metapackage_dependency_names_the_kernel_package() -> None:
    depends = "linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
    assert image_package(depends, "amd64") == "linux-image-6.1.0-56-amd64"
    arm = "linux-image-6.1.0-9-arm64 (= 6.1.27-1), other"
    assert image_package(arm, "arm64") == "linux-image-6.1.0-9-arm64"
    with pytest.raises(RejectedError):
        image_package("linux-image-6.1.0-56-cloud-amd64x", "arm64")


def test_vmlinux_is_found_after_a_decoy_xz_stream() -> None:
    kernel = pvh_kernel()
    decoy = lzma.compress(b"not an elf", format=lzma.FORMAT_XZ)
    payload = lzma.compress(kernel, format=lzma.FORMAT_XZ)
    bzimage = b"MZ" + b"\0" * 500 + decoy + b"\0" * 64 + payload + b"trailer"
    assert extract_vmlinux(bzimage) == kernel


def test_vmlinux_from_gzip_and_refusals() -> None:
    kernel = pvh_kernel()
    assert extract_vmlinux(b"HdrS" * 100 + gzip.compress(kernel) + b"\0" * 10) == kernel
    no_pvh = make_elf()
    assert extract_vmlinux(lzma.compress(no_pvh, format=lzma.FORMAT_XZ)) is None
    assert extract_vmlinux(lzma.compress(make_elf(AARCH64), format=lzma.FORMAT_XZ)) is None
    assert extract_vmlinux(b"\xfd7zXZ\x00 corrupt" * 3) is None
    assert elf.has_pvh_note(kernel)


def test_compressed_modules_are_unpacked(tmp_path: Path) -> None:
    (tmp_path / "a.ko").write_bytes(b"plain")
    (tmp_path / "b.ko.xz").write_bytes(lzma.compress(b"xz module"))
    (tmp_path / "c.ko.gz").write_bytes(gzip.compress(b"gz module"))
    assert module_bytes(tmp_path / "a.ko") == b"plain"
    assert module_bytes(tmp_path / "b.ko.xz") == b"xz module"
    assert module_bytes(tmp_path / "c.ko.gz") == b"gz module"
