"""A real `virtkit image build tiny`, checked without mounting, then smoke-booted under TCG.

Slow, real components: the Debian archive (first run only: ~70 MB kernel package into the default
cache, ~/.cache/virtkit or $VIRTKIT_CACHE, so later runs are warm), mkfs.ext4, qemu-img and
qemu-system-x86_64. Each boot must print the readiness marker within 30 s; QEMU is always killed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.images import elf
from virtkit.images.staged import DISK, INITRD, KERNEL, ROOTFS, StagedImage
from virtkit.images.tiny import DISK_SIZE, build_tiny
from virtkit.images.tinyinit import READY_MARKER
from virtkit.ops.images import cache_dir

from .tinyvm import TinyVM, host_tsc_khz

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds a root-owned tree"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt"),
]

CACHE = cache_dir()
READY_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StagedImage]:
    staging = tmp_path_factory.mktemp("tiny")
    started = time.monotonic()
    image = build_tiny(staging, cache=CACHE)
    print(f"tiny build: {time.monotonic() - started:.1f} s")
    return staging, image


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[list[TinyVM]]:
    started: list[TinyVM] = []
    yield started
    for vm in started:
        vm.stop()


def _append(image: StagedImage, *extra: str) -> str:
    tsc = host_tsc_khz()
    debug = os.environ.get("VIRTKIT_TEST_APPEND", "")  # e.g. virtkit.debug, to trace the initramfs
    return " ".join([image.properties["cmdline"], *([f"tsc_early_khz={tsc}"] if tsc else []), *extra, debug])


def _overlay(staging: Path, image: StagedImage, workdir: Path) -> Path:
    overlay = workdir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(image.path_of(staging, DISK)), str(overlay)], check=True, timeout=30)
    return overlay


def test_build_describes_every_file(built: tuple[Path, StagedImage]) -> None:
    staging, image = built
    assert image.name == "tiny" and image.kinds == ["vm", "container"] and image.arch == "x86_64"
    assert image.files == {DISK: "disk.qcow2", KERNEL: "vmlinuz", INITRD: "initrd.img", ROOTFS: "rootfs"}
    for role in (DISK, KERNEL, INITRD):
        assert image.path_of(staging, role).is_file()
    assert (staging / "rootfs" / "sbin" / "init").is_symlink()
    props = image.properties
    assert props["kernel_version"].endswith("-amd64") and props["busybox_version"]
    assert props["console"] == "ttyS0" and props["ready_port"] == "org.virtkit.ready"
    assert image.source.startswith("built: busybox ")
    assert elf.has_pvh_note((staging / props["vmlinux"]).read_bytes())


def test_root_disk_is_qcow2_holding_the_tree(built: tuple[Path, StagedImage], tmp_path: Path) -> None:
    staging, image = built
    info = json.loads(subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output=json",
                                      str(staging / "disk.qcow2")], capture_output=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == DISK_SIZE == image.virtual_size
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(staging / "disk.qcow2"), str(raw)],
                   check=True, timeout=60)
    hostname = subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(raw)],
                              capture_output=True, text=True, check=True).stdout
    assert hostname.strip() == "tiny"
    listing = subprocess.run(["debugfs", "-R", "ls -l /dev", str(raw)], capture_output=True, text=True).stdout
    assert len(listing.split("\n")) <= 4  # ".", ".." only: no device nodes


def test_warm_rebuild_reuses_the_cache(built: tuple[Path, StagedImage], tmp_path: Path) -> None:
    before = sorted(p.name for p in (CACHE / "debs").iterdir())
    (tmp_path / "again").mkdir()
    started = time.monotonic()
    image = build_tiny(tmp_path / "again", cache=CACHE)
    elapsed = time.monotonic() - started
    assert image.properties["kernel_version"] == built[1].properties["kernel_version"]
    assert sorted(p.name for p in (CACHE / "debs").iterdir()) == before
    assert elapsed < 10.0, f"warm rebuild took {elapsed:.1f} s"


def test_microvm_boots_the_kernel_elf_to_ready(
    built: tuple[Path, StagedImage], tmp_path: Path, vms: list[TinyVM]
) -> None:
    """The fast path: microvm, uncompressed PVH kernel, virtio disk, NIC and ready port."""
    staging, image = built
    disk = _overlay(staging, image, tmp_path)
    vm = TinyVM.boot(tmp_path, machine="microvm", kernel=staging / "vmlinux", initrd=staging / "initrd.img",
                     append=_append(image), devices=[
                         "-drive", f"id=root,file={disk},format=qcow2,if=none",
                         "-device", "virtio-blk-device,drive=root",
                         "-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"])
    vms.append(vm)
    ready = vm.wait_ready(READY_TIMEOUT)
    port = vm.wait_for(vm.ready_log, READY_MARKER, READY_TIMEOUT)
    print(f"microvm: ready on the console after {ready:.2f} s, on the port after {port:.2f} s")
    assert "/dev/vda / ext4 rw" in vm.run("cat /proc/mounts")
    assert vm.run("uname -r") == image.properties["kernel_version"]
    assert vm.run("hostname") == "tiny"
    deadline = time.monotonic() + 15
    while "10.0.2.15/" not in (addr := vm.run("ip -4 addr show dev eth0")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "10.0.2.15/" in addr, "no DHCP lease from QEMU's user network"
    assert "default via 10.0.2.2" in vm.run("ip route")
    vm.qmp("system_powerdown")  # ACPI power button -> acpid -> poweroff
    assert vm.wait_exit(30) == 0


def test_q35_boots_the_bzimage_from_an_ahci_disk(
    built: tuple[Path, StagedImage], tmp_path: Path, vms: list[TinyVM]
) -> None:
    """The emulated path: SeaBIOS, the compressed kernel, an AHCI disk and an e1000 NIC."""
    staging, image = built
    disk = _overlay(staging, image, tmp_path)
    vm = TinyVM.boot(tmp_path, machine="q35", kernel=staging / "vmlinuz", initrd=staging / "initrd.img",
                     append=_append(image), devices=[
                         "-drive", f"id=root,file={disk},format=qcow2,if=none",
                         "-device", "ide-hd,drive=root,bus=ide.0",
                         "-netdev", "user,id=n0", "-device", "e1000,netdev=n0"])
    vms.append(vm)
    print(f"q35: ready after {vm.wait_ready(READY_TIMEOUT):.2f} s")
    assert "/dev/sda / ext4 rw" in vm.run("cat /proc/mounts")
    assert "eth0" in vm.run("ls /sys/class/net")


def test_diskless_boot_runs_from_the_initramfs(
    built: tuple[Path, StagedImage], tmp_path: Path, vms: list[TinyVM]
) -> None:
    staging, image = built
    vm = TinyVM.boot(tmp_path, machine="microvm", kernel=staging / "vmlinux", initrd=staging / "initrd.img",
                     append=_append(image, "virtkit.hostname=probe"), devices=[])
    vms.append(vm)
    vm.wait_ready(READY_TIMEOUT)
    assert vm.run("grep ' / ' /proc/mounts").startswith("rootfs / rootfs")
    assert "ext4" not in vm.run("cat /proc/modules")  # no disk controller: not even loaded
    assert vm.run("hostname") == "probe"


@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="needs qemu-system-arm")
def test_aarch64_build_boots_on_virt(tmp_path: Path, vms: list[TinyVM]) -> None:
    """A foreign architecture: Debian's arm64 kernel and busybox, emulated on the virt machine."""
    staging = tmp_path / "arm"
    staging.mkdir()
    image = build_tiny(staging, cache=CACHE, arch="aarch64")
    assert image.arch == "aarch64" and image.properties["console"] == "ttyAMA0"
    assert "vmlinux" not in image.properties  # arm64's vmlinuz is already an uncompressed Image
    disk = _overlay(staging, image, tmp_path)
    # cortex-a57: under TCG, -cpu max's pointer authentication makes the boot several times slower.
    vm = TinyVM.boot(tmp_path, machine="virt", arch="aarch64", cpu="cortex-a57",
                     kernel=staging / "vmlinuz", initrd=staging / "initrd.img",
                     append=f"{image.properties['cmdline']} {os.environ.get('VIRTKIT_TEST_APPEND', '')}",
                     devices=["-drive", f"id=root,file={disk},format=qcow2,if=none",
                              "-device", "virtio-blk-device,drive=root"])
    vms.append(vm)
    print(f"aarch64: ready after {vm.wait_ready(READY_TIMEOUT):.2f} s")
    assert vm.run("uname -m") == "aarch64"
    assert "/dev/vda / ext4 rw" in vm.run("cat /proc/mounts")
    vm.qmp("system_powerdown")  # gpio-keys power key -> acpid -> poweroff
    assert vm.wait_exit(30) == 0
