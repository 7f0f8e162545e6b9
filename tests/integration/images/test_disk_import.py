"""Disk and ISO imports with the real qemu-img: byte-identical round trips, and every hostile case refused
with nothing left in the staging directory."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

import virtkit.images.disk as disk_module
from virtkit.errors import HostCapabilityError, NotFoundError, RejectedError, ToolError
from virtkit.images.disk import import_disk
from virtkit.images.iso import import_iso
from virtkit.images.staged import DISK, ISO
from virtkit.units import MiB

from .diskbuild import (
    CONVERSIONS,
    SIZE,
    convert,
    fifo,
    huge,
    json_backing,
    make_iso,
    patched,
    qemu_img,
    truncated,
    two_extents,
    vhd_with_huge_table,
    vmdk_reading_host_files,
)

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "staging"
    path.mkdir()
    return path


def identical(raw: Path, qcow2: Path) -> tuple[int, str]:
    done = qemu_img("compare", "-f", "raw", "-F", "qcow2", raw, qcow2)
    return done.returncode, (done.stdout + done.stderr).strip()


@pytest.mark.parametrize("kind", ["raw", *CONVERSIONS])
def test_round_trip_is_byte_identical(
    kind: str, raw_disk: Path, made: Callable[[str], Path], staging: Path
) -> None:
    source = raw_disk if kind == "raw" else made(kind)
    image = import_disk(source, staging, name="imported")
    assert image.files == {DISK: "disk.qcow2"} and sorted(os.listdir(staging)) == ["disk.qcow2"]
    assert image.kinds == ["vm"] and image.virtual_size == SIZE
    fmt = {"vhd": "vpc", "vhd-fixed": "vpc"}.get(kind, kind.split("-")[0])
    assert image.format == image.properties["source_format"] == fmt
    assert image.source == f"imported: {source.name} ({fmt})"
    assert identical(raw_disk, staging / "disk.qcow2") == (0, "Images are identical.")
    info = qemu_img("info", "-f", "qcow2", "--output=json", staging / "disk.qcow2").stdout
    assert '"compat": "1.1"' in info and "backing" not in info


def test_a_vhd_sized_by_geometry_keeps_the_rounded_size(raw_disk: Path, work: Path, staging: Path) -> None:
    """Without force_size qemu-img rounds a VHD up to whole CHS cylinders; the import keeps what the
    VHD says, and the extra tail reads as zeros (qemu-img compare, non-strict, says identical)."""
    vhd = work / "chs.vhd"
    assert qemu_img("convert", "-f", "raw", "-O", "vpc", raw_disk, vhd).returncode == 0
    image = import_disk(vhd, staging, name="chs", fmt="vhd")
    assert image.virtual_size == 67125248 > SIZE
    code, output = identical(raw_disk, staging / "disk.qcow2")
    assert code == 0 and "Image size mismatch" in output


def test_progress_is_reported_up_to_done(made: Callable[[str], Path], staging: Path) -> None:
    seen: list[tuple[str, float | None]] = []
    import_disk(made("vmdk"), staging, name="x", progress=lambda what, done: seen.append((what, done)))
    fractions = [done for what, done in seen if what.startswith("converting") and done is not None]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert seen[-1] == ("imported disk.vmdk", 1.0)


HOSTILE: dict[str, tuple[Callable[[Path, Callable[[str], Path], Path], Path], str]] = {
    "backing file": (
        lambda d, m, r: _overlay(d),
        r"^overlay\.qcow2 refers to a backing file: 'base\.qcow2'$",
    ),
    "json: backing": (
        lambda d, m, r: json_backing(m("qcow2"), d),
        "refers to a backing file: a json: pseudo",
    ),
    "data file": (lambda d, m, r: _with_data_file(d), "keeps its data in an external data file"),
    "encrypted": (
        lambda d, m, r: patched(m("qcow2"), d / "secret.qcow2", {32: struct.pack(">I", 2)}),
        "secret.qcow2 is encrypted",
    ),
    "vmdk delta": (lambda d, m, r: _vmdk_delta(d), "VMDK delta disk with a parent"),
    "vmdk monolithicFlat": (
        lambda d, m, r: convert(r, "vmdk", d) and _flat(r, d),
        r"VMDK descriptor \(createType monolithicFlat\) that refers to other files "
        r"\(extents: flat-flat\.vmdk\)",
    ),
    "vhd asking for 2 GiB": (
        lambda d, m, r: vhd_with_huge_table(m("vhd"), d),
        r"greedy\.vhd cannot be read as a VHD image: qemu-img ran out of memory \(limit 1GiB\)",
    ),
    "vmdk two extents": (lambda d, m, r: two_extents(d), r"extents: two-s001\.vmdk, two-s002\.vmdk"),
    "vmdk capacity 0": (lambda d, m, r: vmdk_reading_host_files(m("vmdk"), d), "declares no capacity"),
    "truncated qcow2": (
        lambda d, m, r: truncated(m("qcow2"), d),
        "corrupt or truncated: qemu-img check found",
    ),
    "truncated vdi": (
        lambda d, m, r: truncated(m("vdi"), d),
        r"is truncated: its \d+ allocated blocks end at",
    ),
    "truncated vhdx": (
        lambda d, m, r: truncated(m("vhdx"), d),
        "cannot be read as a VHDX image: .*truncated",
    ),
    "truncated vmdk": (lambda d, m, r: truncated(m("vmdk"), d), "could not be checked, .*points after EOF"),
    "truncated vhd": (lambda d, m, r: truncated(m("vhd"), d), "cannot be read as a VHD image: .*truncated"),
    "random bytes as qcow2": (
        lambda d, m, r: _write(d / "random.qcow2", os.urandom(MiB)),
        r"^random\.qcow2 is not a qcow2 image \(it looks like: no format virtkit knows\)$",
    ),
    "raw named vmdk": (
        lambda d, m, r: shutil.copyfile(r, d / "raw.vmdk"),
        r"^raw\.vmdk is not a VMDK image \(it looks like: no format virtkit knows\)$",
    ),
    "qcow2 named raw": (
        lambda d, m, r: shutil.copyfile(m("qcow2"), d / "disk.raw"),
        "disk.raw is named as raw data but holds a qcow2 image",
    ),
    "qcow version 1": (lambda d, m, r: _create(d / "old.qcow", "qcow"), "is a qcow version 1 image"),
    "100 PiB": (
        lambda d, m, r: huge(m("qcow2"), d),
        "claims a virtual size of 100PiB, above the limit of 2TiB",
    ),
    "3 TiB vhdx": (
        lambda d, m, r: _create(d / "big.vhdx", "vhdx", "3T"),
        "has a virtual size of 3TiB, above",
    ),
    "raw not whole sectors": (
        lambda d, m, r: _write(d / "odd.img", bytes(1000)),
        "is 1000 bytes, not a whole",
    ),
    "empty file": (lambda d, m, r: _write(d / "empty.img", b""), r"^empty\.img is empty \(0 bytes\)$"),
    "directory": (lambda d, m, r: _mkdir(d / "dir.qcow2"), r"dir\.qcow2 is a directory, not a regular file"),
    "fifo": (lambda d, m, r: fifo(d), r"pipe\.img is a FIFO, not a regular file"),
    "link to a device": (
        lambda d, m, r: _link(d / "zero.img", "/dev/zero"),
        r"zero\.img is a character device \(a symbolic link to /dev/zero\), not a regular file",
    ),
    "link to /proc": (lambda d, m, r: _link(d / "cpu.img", "/proc/cpuinfo"), r"is a kernel pseudo-file"),
    "link to /etc/shadow": (
        lambda d, m, r: _link(d / "shadow.qcow2", "/etc/shadow"),
        r"^shadow\.qcow2 is not a qcow2 image",
    ),
    "an ISO": (
        lambda d, m, r: make_iso(d / "media.iso"),
        r"media\.iso is an ISO 9660 image, not a disk image",
    ),
    "a tarball": (lambda d, m, r: _tarball(d), r"rootfs\.tar\.gz is a gzip archive, not a disk image"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_is_refused_and_leaves_nothing(
    case: str, tmp_path: Path, made: Callable[[str], Path], raw_disk: Path, staging: Path
) -> None:
    build, message = HOSTILE[case]
    (tmp_path / "in").mkdir()
    source = Path(build(tmp_path / "in", made, raw_disk))
    with pytest.raises(RejectedError, match=message):
        import_disk(source, staging, name="hostile")
    assert list(staging.iterdir()) == []


def test_a_limit_below_the_image_refuses_it(made: Callable[[str], Path], staging: Path) -> None:
    with pytest.raises(RejectedError, match="has a virtual size of 64MiB, above the limit of 32MiB"):
        import_disk(made("vhdx"), staging, name="x", max_virtual_size=32 * MiB)
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("how", ["missing", "dangling link"])
def test_a_missing_file_is_not_found(how: str, tmp_path: Path, staging: Path) -> None:
    source = tmp_path / "gone.qcow2"
    if how == "dangling link":
        source.symlink_to(tmp_path / "nowhere.qcow2")
    with pytest.raises(NotFoundError, match=r"gone\.qcow2"):
        import_disk(source, staging, name="x")
    assert list(staging.iterdir()) == []


def test_a_link_to_an_image_is_followed(made: Callable[[str], Path], tmp_path: Path, staging: Path) -> None:
    link = _link(tmp_path / "latest.qcow2", str(made("qcow2")))
    assert import_disk(link, staging, name="x").virtual_size == SIZE


def test_a_source_changed_during_the_import_is_refused(
    made: Callable[[str], Path], tmp_path: Path, staging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Path(shutil.copyfile(made("qcow2"), tmp_path / "moving.qcow2"))
    real_convert = disk_module._convert

    def convert_then_write(*args: object, **kwargs: object) -> None:
        real_convert(*args, **kwargs)  # type: ignore[arg-type]
        with source.open("r+b") as f:
            f.seek(8)
            f.write(b"\0" * 8)

    monkeypatch.setattr(disk_module, "_convert", convert_then_write)
    with pytest.raises(RejectedError, match=r"moving\.qcow2 changed while it was being imported"):
        import_disk(source, staging, name="x")
    assert list(staging.iterdir()) == []


def test_a_failure_after_converting_removes_the_output(
    made: Callable[[str], Path], staging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise ToolError("qemu-img info failed")

    monkeypatch.setattr(disk_module, "_verify_output", broken)
    with pytest.raises(ToolError):
        import_disk(made("qcow2"), staging, name="x")
    assert list(staging.iterdir()) == []


def test_without_qemu_img_the_host_is_named(
    made: Callable[[str], Path], tmp_path: Path, staging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostCapabilityError, match="qemu-img is not installed") as caught:
        import_disk(made("qcow2"), staging, name="x")
    assert "qemu-utils" in (caught.value.hint or "")
    assert list(staging.iterdir()) == []


def test_an_iso_is_kept_byte_for_byte(tmp_path: Path, staging: Path) -> None:
    source = make_iso(tmp_path / "debian-12.iso")
    seen: list[float | None] = []
    image = import_iso(source, staging, name="debian", progress=lambda _what, done: seen.append(done))
    assert image.files == {ISO: "install.iso"} and image.format == "iso" and image.kinds == ["vm"]
    assert (staging / "install.iso").read_bytes() == source.read_bytes()
    assert image.properties["volume_id"] == "VIRTKIT TEST"
    assert image.properties["el_torito"] == "yes"
    assert image.virtual_size == 32 * 2048 and seen[-1] == 1.0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: _cut(make_iso(p / "short.iso"), 20 * 2048), r"is truncated: its volume is 65536 bytes"),
        (lambda p: make_iso(p / "odd.iso", primary=False), "has no primary volume descriptor"),
        (lambda p: shutil.copyfile(_create(p / "d.qcow2", "qcow2"), p / "d.iso"), r"not an ISO 9660 image"),
        (
            lambda p: _create(p / "d.img", "qcow2"),
            r"d\.img is not an ISO 9660 image \(it looks like: qcow2\)",
        ),
        (lambda p: _write(p / "tiny.iso", b"CD001"), r"tiny\.iso is not an ISO 9660 image"),
    ],
)
def test_bad_isos_are_refused(
    build: Callable[[Path], Path], message: str, tmp_path: Path, staging: Path
) -> None:
    with pytest.raises(RejectedError, match=message):
        import_iso(Path(build(tmp_path)), staging, name="x")
    assert list(staging.iterdir()) == []


# --- small builders --------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def _cut(path: Path, size: int) -> Path:
    os.truncate(path, size)
    return path


def _create(path: Path, fmt: str, size: str = "64M", *options: str) -> Path:
    done = qemu_img("create", "-f", fmt, *options, path, size)
    assert done.returncode == 0, done.stderr
    return path


def _overlay(directory: Path) -> Path:
    _create(directory / "base.qcow2", "qcow2")
    done = qemu_img(
        "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "overlay.qcow2", cwd=directory
    )
    assert done.returncode == 0, done.stderr
    return directory / "overlay.qcow2"


def _with_data_file(directory: Path) -> Path:
    return _create(directory / "split.qcow2", "qcow2", "64M", "-o", f"data_file={directory / 'split.raw'}")


def _vmdk_delta(directory: Path) -> Path:
    _create(directory / "parent.vmdk", "vmdk")
    done = qemu_img("create", "-f", "vmdk", "-b", "parent.vmdk", "-F", "vmdk", "child.vmdk", cwd=directory)
    assert done.returncode == 0, done.stderr
    return directory / "child.vmdk"


def _flat(raw: Path, directory: Path) -> Path:
    target = directory / "flat.vmdk"
    assert (
        qemu_img(
            "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat", raw, target
        ).returncode
        == 0
    )
    return target


def _tarball(directory: Path) -> Path:
    path = directory / "rootfs.tar.gz"
    with gzip.open(path, "wb") as packed, tarfile.open(fileobj=packed, mode="w") as tar:
        tar.add(__file__, arcname="etc/hostname")
    return path
