"""Header checks made before QEMU opens an image: synthetic qcow2, VMDK, VDI and raw headers."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from virtkit.errors import RejectedError
from virtkit.images.headers import inspect_headers
from virtkit.units import GiB, MiB, PiB, TiB

LIMIT = 2 * TiB
Check = Callable[..., "int | None"]


def qcow2(
    *,
    size: int = GiB,
    version: int = 3,
    backing: bytes = b"",
    crypt: int = 0,
    cluster_bits: int = 16,
    incompatible: int = 0,
    extensions: bytes = b"",
) -> bytes:
    """A qcow2 header cluster (the tables are not needed by these checks)."""
    backing_offset = 0x800 if backing else 0
    head = struct.pack(
        ">4sIQIIQI", b"QFI\xfb", version, backing_offset, len(backing), cluster_bits, size, crypt
    )
    head = head.ljust(72, b"\0")
    if version >= 3:
        head += struct.pack(">QQQII", incompatible, 0, 0, 4, 104)
    head += extensions + bytes(8)  # end-of-extensions marker
    cluster = bytearray(head.ljust(0x1000, b"\0"))
    cluster[0x800 : 0x800 + len(backing)] = backing
    return bytes(cluster)


def extension(kind: int, data: bytes) -> bytes:
    return struct.pack(">II", kind, len(data)) + data.ljust((len(data) + 7) // 8 * 8, b"\0")


def vmdk(*, capacity: int = 131072, descriptor: bytes = b"") -> bytes:
    desc_offset, desc_size = (1, 20) if descriptor else (0, 0)
    head = struct.pack("<4sIIQQQQ", b"KDMV", 1, 3, capacity, 128, desc_offset, desc_size).ljust(512, b"\0")
    return head + descriptor.ljust(20 * 512, b"\0") if descriptor else head


def vdi(*, size: int = 64 * MiB, allocated: int = 2, offset_data: int = 0x400, file_blocks: int = 2) -> bytes:
    head = bytearray(0x200)
    head[0:4] = b"<<< "
    head[0x40:0x44] = b"\x7f\x10\xda\xbe"
    head[0x158:0x15C] = struct.pack("<I", offset_data)
    head[0x170:0x188] = struct.pack("<QIIII", size, MiB, 0, size // MiB, allocated)
    return bytes(head).ljust(offset_data + file_blocks * MiB, b"\0")


@pytest.fixture
def check(tmp_path: Path) -> Iterator[Check]:
    fds: list[int] = []

    def run(data: bytes, fmt: str, limit: int = LIMIT) -> int | None:
        path = tmp_path / f"image.{fmt}"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        fds.append(fd)
        return inspect_headers(fd, fmt, len(data), path.name, limit)

    yield run
    for fd in fds:
        os.close(fd)


def test_a_plain_qcow2_gives_its_virtual_size(check: Check) -> None:
    assert check(qcow2(size=5 * GiB), "qcow2") == 5 * GiB
    assert check(qcow2(version=2), "qcow2") == GiB


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (qcow2(backing=b"base.qcow2"), r"refers to a backing file: 'base\.qcow2'"),
        (qcow2(backing=b"/etc/shadow", version=2), r"refers to a backing file: '/etc/shadow'"),
        (qcow2(backing=b'json:{"driver":"nbd","host":"x"}'), "a json: pseudo-filename"),
        (qcow2(backing=b'  json:{"driver":"file"}'), "a json: pseudo-filename"),
        (qcow2(incompatible=4), "keeps its data in an external data file"),
        (qcow2(extensions=extension(0x44415441, b"data.raw")), r"external data file \('data\.raw'\)"),
        (qcow2(crypt=2), "is encrypted"),
        (qcow2(extensions=extension(0x0537BE77, bytes(16))), "is encrypted"),
        (qcow2(cluster_bits=31), "cluster_bits is 31"),
        (qcow2(size=100 * PiB), "claims a virtual size of 100PiB, above the limit of 2TiB"),
        (qcow2()[:40], "is truncated: its qcow2 header is incomplete"),
    ],
)
def test_qcow2_headers_that_reach_outside_or_lie_are_refused(
    check: Check, header: bytes, message: str
) -> None:
    with pytest.raises(RejectedError, match=message):
        check(header, "qcow2")


def test_other_qcow2_extensions_are_walked_past(check: Check) -> None:
    backing_format = extension(0xE2792ACA, b"qcow2") + extension(0x6803F857, bytes(48))
    assert check(qcow2(extensions=backing_format), "qcow2") == GiB


def test_the_limit_is_a_parameter(check: Check) -> None:
    with pytest.raises(RejectedError, match="claims a virtual size of 1GiB, above the limit of 512MiB"):
        check(qcow2(), "qcow2", 512 * MiB)


SPARSE_DESCRIPTOR = b'# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\ncreateType="monolithicSparse"\n'


def test_a_single_file_vmdk_gives_its_capacity(check: Check) -> None:
    assert check(vmdk(descriptor=SPARSE_DESCRIPTOR), "vmdk") == 64 * MiB
    assert check(vmdk(), "vmdk") == 64 * MiB


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (vmdk(capacity=0, descriptor=b'RW 8 FLAT "/etc/shadow" 0\n'), "declares no capacity"),
        (vmdk(descriptor=b'createType="vmfsSparse"\n'), "is a VMDK of type vmfsSparse"),
        (
            vmdk(descriptor=b'parentCID=12345678\nparentFileNameHint="base.vmdk"\n'),
            "delta disk with a parent",
        ),
        (vmdk(descriptor=b"parentCID=0badf00d\n"), "delta disk with a parent"),
        (vmdk(capacity=(3 * TiB) // 512), "claims a virtual size of 3TiB"),
        (vmdk()[:30], "VMDK header is incomplete"),
    ],
)
def test_vmdk_headers_that_reach_outside_are_refused(check: Check, header: bytes, message: str) -> None:
    with pytest.raises(RejectedError, match=message):
        check(header, "vmdk")


def test_a_whole_vdi_passes_and_a_truncated_one_does_not(check: Check) -> None:
    assert check(vdi(), "vdi") == 64 * MiB
    with pytest.raises(RejectedError, match=r"is truncated: its 2 allocated blocks end at byte 2098176"):
        check(vdi(file_blocks=1), "vdi")
    with pytest.raises(RejectedError, match="claims a virtual size of 4TiB"):
        check(vdi(size=4 * TiB), "vdi")


def test_raw_must_be_whole_sectors(check: Check) -> None:
    assert check(bytes(4096), "raw") == 4096
    with pytest.raises(RejectedError, match="is 653 bytes, not a whole number of 512-byte sectors"):
        check(bytes(653), "raw")


@pytest.mark.parametrize("fmt", ["vpc", "vhdx"])
def test_formats_without_outside_references_are_left_to_qemu(check: Check, fmt: str) -> None:
    assert check(b"anything", fmt) is None
