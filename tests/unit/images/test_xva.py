"""XenServer exports: ova.xml read into hardware, disks put back together from checksummed 1 MiB
chunks (left-out chunks are zeros), and every kind of corruption refused."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from tests.unit.images import v2vbuild
from virtkit.errors import RejectedError, SpecError
from virtkit.images import foreign, xva, xvadisk
from virtkit.images.appliance import kind_of

MiB = 1024 * 1024


def _disk(size: int, filled: tuple[int, ...]) -> bytes:
    """`size` bytes, zeros but for the chunks in `filled`."""
    data = bytearray(size)
    for index in filled:
        data[index * MiB : index * MiB + 16] = f"chunk {index:08d}".encode().ljust(16, b"!")
    return bytes(data)


def test_ova_xml_hardware() -> None:
    hardware = xva.parse(
        v2vbuild.ova_xml("Xen Guest", 4, 768 * MiB, [8 * MiB, 2 * MiB], firmware="uefi"), "g.xva"
    )
    assert (hardware.source, hardware.name, hardware.cpus, hardware.memory) == (
        "XenServer",
        "Xen Guest",
        4,
        768 * MiB,
    )
    assert hardware.firmware == "uefi" and hardware.os == "debian"
    assert [(d.file, d.capacity, d.bus) for d in hardware.disks] == [
        ("Ref:10", 8 * MiB, "xen"),
        ("Ref:11", 2 * MiB, "xen"),
    ]
    assert [(n.mac, n.network) for n in hardware.nics] == [("aa:bb:cc:00:11:22", "Pool-wide network")]
    assert any("CD drive" in note for note in hardware.notes)
    pv = xva.parse(v2vbuild.ova_xml("pv", 1, 256 * MiB, [MiB], policy=""), "pv.xva")
    assert pv.firmware == "bios" and any("PV guest" in note for note in pv.notes)


@pytest.mark.parametrize(
    ("descriptor", "error", "message"),
    [
        (v2vbuild.ova_xml("x", 10**9, 256 * MiB, [MiB]), SpecError, "CPUs"),
        (v2vbuild.ova_xml("x", 1, 2**50, [MiB]), SpecError, "of memory"),
        (v2vbuild.ova_xml("x", 1, 256 * MiB, [2**70]), SpecError, "capacity"),
        (b"<value><struct></struct></value>", RejectedError, "no objects"),
        (b"<Envelope/>", RejectedError, "no XML-RPC value"),
        (b'<!DOCTYPE v [<!ENTITY a SYSTEM "file:///etc/passwd">]><value>&a;</value>', RejectedError, "DTD"),
    ],
)
def test_ova_xml_refusals(descriptor: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        xva.parse(descriptor, "x.xva")


def _nested(depth: int) -> bytes:
    return b"<value><array><data>" * depth + b"<value/>" + b"</data></array></value>" * depth


def test_deep_nesting_is_bounded() -> None:
    with pytest.raises(RejectedError, match="nests"):
        xva.parse(_nested(40), "x.xva")


def _xva(tmp_path: Path, disks: dict[str, bytes], **options: object) -> Path:
    sizes = [len(data) for data in disks.values()]
    descriptor = v2vbuild.ova_xml("guest", 2, 512 * MiB, sizes)
    return v2vbuild.xva(tmp_path / "guest.xva", descriptor, disks, **options)  # type: ignore[arg-type]


def _assemble(path: Path, dest: Path) -> dict[str, Path]:
    source = foreign.read(path)
    dest.mkdir(exist_ok=True)
    return xvadisk.extract(path, dest, source.hardware, source.descriptor)


@pytest.mark.parametrize("checksum", [".checksum", ".xxhash"])
def test_chunks_become_sparse_raw_disks(tmp_path: Path, checksum: str) -> None:
    first, second = _disk(6 * MiB, (0, 2, 5)), _disk(2 * MiB + 4096, (1,))
    path = _xva(tmp_path, {"Ref:10": first, "Ref:11": second}, checksum=checksum)
    assert kind_of(path) == "xva"
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert "Ref:10/00000001" not in names and "Ref:10/00000005" in names  # zeros left out, last kept
    files = _assemble(path, tmp_path / "out")
    assert files["Ref:10"].read_bytes() == first and files["Ref:11"].read_bytes() == second
    assert os.stat(files["Ref:10"]).st_blocks * 512 < 2 * MiB  # the left-out chunks are holes


def test_keepalive_empty_chunk_then_data(tmp_path: Path) -> None:
    data = _disk(2 * MiB, (0, 1))
    path = tmp_path / "k.xva"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        v2vbuild.add(tar, "ova.xml", v2vbuild.ova_xml("k", 1, 256 * MiB, [2 * MiB]))
        for index, chunk in ((0, data[:MiB]), (1, b""), (1, data[MiB:])):
            v2vbuild.add(tar, f"Ref:10/{index:08d}", chunk)
            v2vbuild.add(tar, f"Ref:10/{index:08d}.checksum", hashlib.sha1(chunk).hexdigest().encode())
    assert _assemble(path, tmp_path / "out")["Ref:10"].read_bytes() == data  # XAPI's keep-alive: tolerated
    twice = tmp_path / "twice.xva"
    with tarfile.open(twice, "w", format=tarfile.USTAR_FORMAT) as tar:
        v2vbuild.add(tar, "ova.xml", v2vbuild.ova_xml("k", 1, 256 * MiB, [2 * MiB]))
        for index, chunk in ((0, data[:MiB]), (0, data[:MiB]), (1, data[MiB:])):
            v2vbuild.add(tar, f"Ref:10/{index:08d}", chunk)
            v2vbuild.add(tar, f"Ref:10/{index:08d}.checksum", hashlib.sha1(chunk).hexdigest().encode())
    with pytest.raises(RejectedError, match="out of order"):  # but a chunk with data comes once
        _assemble(twice, tmp_path / "out2")


def _rewrite(path: Path, target: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of the XVA at `path` with members replaced (bytes) or left out (None)."""
    with tarfile.open(path) as source, tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member in source.getmembers():
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name in change:
                replaced = change[member.name]
                if replaced is None:
                    continue
                data = replaced
            v2vbuild.add(tar, member.name, data)
    return target


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Ref:10/00000002": b"X" * MiB}, "SHA-1 of chunk Ref:10/00000002"),
        ({"Ref:10/00000002.checksum": b"0" * 40}, "SHA-1 of chunk"),
        ({"Ref:10/00000002.checksum": None}, "has no checksum"),
        ({"Ref:10/00000005": None, "Ref:10/00000005.checksum": None}, "last chunk is missing"),
        ({"Ref:10/00000002": b"short"}, "holds 5 bytes"),
        ({"ova.xml": v2vbuild.ova_xml("guest", 2, 512 * MiB, [MiB])}, "planned from"),
    ],
)
def test_corruption_is_refused(tmp_path: Path, change: dict[str, bytes | None], message: str) -> None:
    good = _xva(tmp_path, {"Ref:10": _disk(6 * MiB, (0, 2, 5))})
    source = foreign.read(good)
    bad = _rewrite(good, tmp_path / "bad.xva", change)
    (tmp_path / "out").mkdir()
    with pytest.raises(RejectedError, match=message):
        xvadisk.extract(bad, tmp_path / "out", source.hardware, source.descriptor)


def test_foreign_members_and_order(tmp_path: Path) -> None:
    good = _xva(tmp_path, {"Ref:10": _disk(3 * MiB, (0, 1, 2))})
    source = foreign.read(good)
    with tarfile.open(good) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    cases = {
        "other.xva": ([*members[:-1], ("Ref:99/00000000", b"")], "belongs to no disk"),
        "stray.xva": ([*members, ("notes.txt", b"hello")], "neither a disk chunk"),
        "order.xva": ([members[0], *members[3:5], *members[1:3], *members[5:]], "out of order"),
        "past.xva": ([*members, ("Ref:10/00000007", b"x" * MiB)], "past the disk's end"),
    }
    for name, (listed, message) in cases.items():
        path = v2vbuild.ova(tmp_path / name, listed)
        dest = tmp_path / f"out-{name}"
        dest.mkdir()
        with pytest.raises(RejectedError, match=message):
            xvadisk.extract(path, dest, source.hardware, source.descriptor)
    link = tmp_path / "link.xva"
    with tarfile.open(link, "w", format=tarfile.USTAR_FORMAT) as tar:
        v2vbuild.add(tar, "ova.xml", source.descriptor)
        info = tarfile.TarInfo("Ref:10/00000000")
        info.type, info.linkname = tarfile.SYMTYPE, "/dev/sda"
        tar.addfile(info)
    (tmp_path / "out-link").mkdir()
    with pytest.raises(RejectedError, match="symbolic link"):
        xvadisk.extract(link, tmp_path / "out-link", source.hardware, source.descriptor)


def test_truncated_xva(tmp_path: Path) -> None:
    good = _xva(tmp_path, {"Ref:10": _disk(3 * MiB, (0, 1, 2))})
    source = foreign.read(good)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 20_000):
        short = tmp_path / f"cut{cut}.xva"
        short.write_bytes(data[:cut])
        (tmp_path / f"out{cut}").mkdir()
        with pytest.raises(RejectedError, match=r"truncated|breaks off|missing"):
            xvadisk.extract(short, tmp_path / f"out{cut}", source.hardware, source.descriptor)


def test_xxh64_matches_known_values() -> None:
    assert xvadisk.xxh64(b"") == 0xEF46DB3751D8E999
    assert xvadisk.xxh64_python(b"") == 0xEF46DB3751D8E999
    for size in (1, 3, 4, 7, 8, 31, 32, 33, 100, 4099):
        data = os.urandom(size)
        assert xvadisk.xxh64_python(data) == xvadisk.xxh64(data)
