"""Format detection on synthetic headers: signatures decide, extensions must agree, raw is what's left."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import struct
import tarfile

import pytest

from virtkit.errors import RejectedError, SpecError
from virtkit.images.detect import (
    HEAD_SIZE,
    canonical_format,
    classify,
    sniff,
    vmdk_descriptor_summary,
)

ZEROS = bytes(HEAD_SIZE)
NOISE = random.Random(7).randbytes(HEAD_SIZE)
DESCRIPTOR = (
    b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
    b'createType="monolithicFlat"\n\n# Extent description\n'
    b'RW 131072 FLAT "disk-flat.vmdk" 0\nRW 131072 FLAT "/etc/shadow" 0\n'
)


def at(offset: int, data: bytes, size: int = HEAD_SIZE) -> bytes:
    """`size` zero bytes with `data` written at `offset`."""
    buf = bytearray(size)
    buf[offset : offset + len(data)] = data
    return bytes(buf)


def tar_head() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("etc/hostname")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"box\n"))
    return out.getvalue()


HEADS = {
    "qcow2": b"QFI\xfb" + struct.pack(">I", 3) + bytes(64),
    "qcow2 v2": b"QFI\xfb" + struct.pack(">I", 2) + bytes(64),
    "qcow": b"QFI\xfb" + struct.pack(">I", 1) + bytes(64),
    "qed": b"QFI\x00" + bytes(64),
    "vmdk": b"KDMV" + struct.pack("<I", 1) + bytes(64),
    "vmdk3": b"COWD" + bytes(64),
    "vmdk-descriptor": DESCRIPTOR,
    "vdi": at(0, b"<<< Oracle VM VirtualBox Disk Image >>>\n")[:0x40] + b"\x7f\x10\xda\xbe" + bytes(64),
    "vhdx": b"vhdxfile" + "Microsoft Windows".encode("utf-16-le"),
    "vpc": b"conectix" + bytes(504),
    "luks": b"LUKS\xba\xbe\x00\x01" + bytes(64),
    "parallels": b"WithoutFreeSpace" + bytes(64),
    "gzip": gzip.compress(b"data"),
    "xz": lzma.compress(b"data"),
    "zstd": b"\x28\xb5\x2f\xfd\x04\x00" + bytes(16),
    "bzip2": bz2.compress(b"data"),
    "tar": tar_head(),
    "iso": at(0x8000, b"\x01CD001\x01"),
}


@pytest.mark.parametrize("label", sorted(HEADS))
def test_each_signature_is_recognised(label: str) -> None:
    assert sniff(HEADS[label]) == label.split()[0]


def test_a_fixed_vhd_is_known_by_its_footer_alone() -> None:
    assert sniff(ZEROS, b"conectix" + bytes(504)) == "vpc"
    assert sniff(ZEROS, b"conectix" + bytes(100)) is None  # a footer is 512 bytes


@pytest.mark.parametrize("head", [ZEROS, NOISE, b"", b"QFI", b"<<< no signature at 0x40" + bytes(100)])
def test_no_signature_is_none(head: bytes) -> None:
    assert sniff(head, head[-512:]) is None


def test_a_hybrid_iso_with_a_boot_sector_is_still_iso() -> None:
    head = bytearray(HEADS["iso"])
    head[0:3] = b"\xeb\x63\x90"
    head[510:512] = b"\x55\xaa"
    assert sniff(bytes(head)) == "iso"


def fmt_of(name: str, head: bytes, fmt: str | None = None, tail: bytes = b"") -> tuple[str, str, str]:
    found = classify(name, head, tail, fmt)
    return found.format, found.kind, found.how


@pytest.mark.parametrize(
    ("name", "label", "expected"),
    [
        ("disk.qcow2", "qcow2", ("qcow2", "disk", "signature")),
        ("cloud.img", "qcow2", ("qcow2", "disk", "signature")),  # cloud images are qcow2 named .img
        ("disk", "vdi", ("vdi", "disk", "signature")),
        ("DISK.VMDK", "vmdk", ("vmdk", "disk", "signature")),
        ("disk.vhd", "vpc", ("vpc", "disk", "signature")),
        ("disk.vhdx", "vhdx", ("vhdx", "disk", "signature")),
        ("debian.iso", "iso", ("iso", "iso", "signature")),
        ("rootfs.tar.gz", "gzip", ("gzip", "archive", "signature")),
        ("rootfs.tar.zst", "zstd", ("zstd", "archive", "signature")),
        ("rootfs.tar.bz2", "bzip2", ("bzip2", "archive", "signature")),
        ("rootfs.tar", "tar", ("tar", "archive", "signature")),
        ("mystery", "xz", ("xz", "archive", "signature")),
    ],
)
def test_signature_decides(name: str, label: str, expected: tuple[str, str, str]) -> None:
    assert fmt_of(name, HEADS[label]) == expected


@pytest.mark.parametrize("name", ["disk.img", "disk.raw", "DISK.IMG"])
def test_raw_is_an_img_or_raw_file_without_a_signature(name: str) -> None:
    assert fmt_of(name, ZEROS) == ("raw", "disk", "extension")
    assert fmt_of(name, NOISE) == ("raw", "disk", "extension")


@pytest.mark.parametrize(
    ("name", "label", "message"),
    [
        ("disk.vmdk", "qcow2", r"^disk\.vmdk is not a VMDK image \(it looks like: qcow2\)$"),
        ("disk.qcow2", "vhdx", r"^disk\.qcow2 is not a qcow2 image \(it looks like: VHDX\)$"),
        ("disk.vhd", "vhdx", r"is not a VHD image \(it looks like: VHDX\)"),
        ("disk.vdi", "iso", r"is not a VDI image \(it looks like: ISO 9660\)"),
        ("x.iso", "qcow2", r"is not an ISO 9660 image \(it looks like: qcow2\)"),
        ("rootfs.tar.gz", "tar", r"is not a gzip archive \(it looks like: tar\)"),
        ("disk.raw", "qcow2", r"disk\.raw is named as raw data but holds a qcow2 image"),
    ],
)
def test_an_extension_that_lies_is_refused(name: str, label: str, message: str) -> None:
    with pytest.raises(RejectedError, match=message):
        classify(name, HEADS[label], b"")


def test_random_bytes_named_qcow2_are_refused_with_the_raw_way_out() -> None:
    with pytest.raises(RejectedError, match=r"not a qcow2 image \(it looks like: no format") as caught:
        classify("disk.qcow2", NOISE, NOISE[-512:])
    assert "--format raw" in (caught.value.hint or "")


def test_an_unknown_file_is_refused_with_what_is_accepted() -> None:
    with pytest.raises(RejectedError, match="cannot tell what blob is") as caught:
        classify("blob", ZEROS, b"")
    hint = caught.value.hint or ""
    assert all(word in hint for word in ("qcow2", "VMDK", "VDI", "VHD", "VHDX", "ISO", "--format raw"))


def test_format_raw_takes_any_bytes_as_asked() -> None:
    assert fmt_of("blob", ZEROS, "raw") == ("raw", "disk", "explicit")
    assert fmt_of("disk.vmdk", HEADS["qcow2"], "RAW") == ("raw", "disk", "explicit")
    assert fmt_of("disk.vmdk", DESCRIPTOR, "raw") == ("raw", "disk", "explicit")


def test_an_explicit_format_must_match_the_bytes() -> None:
    assert fmt_of("disk.bin", HEADS["vpc"], "vhd") == ("vpc", "disk", "signature")
    with pytest.raises(RejectedError, match=r"^disk\.bin is not a VHD image \(it looks like: qcow2\)$"):
        classify("disk.bin", HEADS["qcow2"], b"", "vhd")
    with pytest.raises(RejectedError, match="is not a VDI image"):
        classify("disk.vdi", ZEROS, b"", "vdi")


@pytest.mark.parametrize(
    ("label", "message", "hint"),
    [
        ("qcow", "is a qcow version 1 image, which virtkit does not import", "-f qcow -O qcow2"),
        ("qed", "is a QED image", "-f qed -O qcow2"),
        ("parallels", "is a Parallels image", "-f parallels"),
        ("vmdk3", r"is a VMDK version 3 \(COWD\) image", "-f vmdk"),
        ("luks", "is a LUKS-encrypted image", "decrypt"),
    ],
)
def test_formats_virtkit_does_not_import_are_refused_with_a_way_forward(
    label: str, message: str, hint: str
) -> None:
    with pytest.raises(RejectedError, match=message) as caught:
        classify("disk.img", HEADS[label], b"")
    assert hint in (caught.value.hint or "")


@pytest.mark.parametrize("fmt", [None, "vmdk"])
def test_a_vmdk_descriptor_is_refused_naming_its_extents(fmt: str | None) -> None:
    with pytest.raises(RejectedError, match="createType monolithicFlat") as caught:
        classify("disk.vmdk", DESCRIPTOR, b"", fmt)
    assert "extents: disk-flat.vmdk, /etc/shadow" in caught.value.message
    assert "--format raw" in (caught.value.hint or "")


def test_descriptor_summary_shows_hostile_names_safely() -> None:
    text = b'createType="twoGbMaxExtentSparse"\nRW 8 SPARSE "a\x1b[31m.vmdk"\nRDONLY 8 FLAT "b.vmdk" 0\n'
    assert vmdk_descriptor_summary(text) == ("twoGbMaxExtentSparse", ["a?[31m.vmdk", "b.vmdk"])
    assert vmdk_descriptor_summary(b"garbage") == ("unknown", [])


@pytest.mark.parametrize(
    ("typed", "name"),
    [("qcow2", "qcow2"), ("VHD", "vpc"), ("vpc", "vpc"), (" VHDX ", "vhdx"), ("raw", "raw")],
)
def test_canonical_format(typed: str, name: str) -> None:
    assert canonical_format(typed) == name


@pytest.mark.parametrize("typed", ["qcow3", "", "vhd2", "qed", "json:{}"])
def test_unknown_format_names_are_spec_errors(typed: str) -> None:
    with pytest.raises(SpecError, match="unknown image format"):
        canonical_format(typed)
