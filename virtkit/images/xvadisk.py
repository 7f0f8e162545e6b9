"""An XVA's disks, put back together from its chunks and checked, as sparse raw files.

After ova.xml, an XVA holds for each disk (VDI) a directory named by its id ("Ref:12/") of 1 MiB
chunks named by their index ("00000042"), each followed by its checksum: "00000042.checksum"
(SHA-1, hex) or "00000042.xxhash" (XXH64, 16 hex digits, as XAPI writes it). A chunk that is not
there is all zeros (XAPI leaves them out), but the first and last are always there, so a disk
whose last chunk never came is a truncated archive. XAPI may send an empty chunk to keep a
connection alive and the same chunk again with its data. Refused: a chunk of a disk ova.xml does
not describe, out of order, of a wrong size or past the disk's end, a checksum that differs or is
missing, any other member.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import tarfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from virtkit.errors import RejectedError
from virtkit.images.appliance import MAX_DESCRIPTOR, Hardware
from virtkit.images.detect import printable
from virtkit.images.package import create, plain_limits, read_small, walk, write_sparse

CHUNK = 1024 * 1024
_MEMBER = re.compile(r"^(Ref:[0-9A-Za-z\-]{1,64})/([0-9]{8})(\.checksum|\.xxhash)?$")
_M64 = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (
    0x9E3779B185EBCA87,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x85EBCA77C2B2AE63,
    0x27D4EB2F165667C5,
)


def file_of(ref: str) -> str:
    """The raw file a VDI is put together in ("Ref:12" → "Ref-12.raw": no ':' in a path QEMU reads)."""
    return ref.replace(":", "-") + ".raw"


@dataclass
class _Disk:
    path: Path
    size: int
    fd: int
    last: int = -1  # index of the last chunk written
    last_empty: bool = False
    complete: bool = False


@dataclass
class _Assembly:
    label: str
    planned: bytes
    disks: dict[str, _Disk]
    started: bool = False
    pending: tuple[str, int, bytes] | None = (
        None  # (VDI, chunk index, the chunk's data) awaiting its checksum
    )
    written: dict[str, Path] = field(default_factory=dict)

    def refuse(self, why: str) -> RejectedError:
        return RejectedError(f"archive {self.label} is refused: {why}", hint="export the VM again")

    def visit(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        if not self.started:
            if name != "ova.xml" or read_small(tar, member, self.label, MAX_DESCRIPTOR) != self.planned:
                raise self.refuse("its first member is not the ova.xml it was planned from")
            self.started = True
            return
        match = _MEMBER.match(name)
        if match is None:
            raise self.refuse(f"member {printable(name)!r} is neither a disk chunk nor its checksum")
        ref, index, suffix = match[1], int(match[2]), match[3]
        disk = self.disks.get(ref)
        if disk is None:
            raise self.refuse(f"member {printable(name)!r} belongs to no disk its ova.xml describes")
        if suffix:
            self._checksum(tar, member, ref, index, suffix, name)
            return
        if self.pending is not None:
            raise self.refuse(f"chunk {self.pending[0]}/{self.pending[1]:08d} has no checksum")
        self._chunk(tar, member, disk, ref, index, name)

    def _chunk(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, disk: _Disk, ref: str, index: int, name: str
    ) -> None:
        offset = index * CHUNK
        again = index == disk.last and disk.last_empty
        if index < disk.last or (index == disk.last and not again):
            raise self.refuse(f"chunk {printable(name)!r} comes out of order")
        size = member.size
        if size not in (0, CHUNK, disk.size - offset) or offset + size > disk.size:
            raise self.refuse(
                f"chunk {printable(name)!r} holds {size} bytes: a chunk is 1 MiB, and none "
                f"lies past the disk's end ({disk.size} bytes)"
            )
        data = read_small(tar, member, self.label, CHUNK)
        if data:
            os.lseek(disk.fd, offset, os.SEEK_SET)
            write_sparse(disk.fd, data)
        disk.last, disk.last_empty = index, not data
        disk.complete = disk.complete or (bool(data) and offset + size == disk.size)
        self.pending = (ref, index, data)

    def _checksum(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, ref: str, index: int, suffix: str, name: str
    ) -> None:
        if self.pending is None or self.pending[:2] != (ref, index):
            raise self.refuse(f"checksum {printable(name)!r} follows no chunk of its own")
        given = read_small(tar, member, self.label, 256).decode("ascii", errors="replace").strip().lower()
        data = self.pending[2]
        computed = hashlib.sha1(data).hexdigest() if suffix == ".checksum" else f"{xxh64(data):016x}"
        if given != computed:
            kind = "SHA-1" if suffix == ".checksum" else "XXH64"
            raise RejectedError(
                f"archive {self.label} is corrupt: the {kind} of chunk {ref}/{index:08d} "
                "is not the one it was exported with",
                hint="copy the XVA again from where it was exported",
            )
        self.pending = None


def extract(source: Path, dest: Path, hardware: Hardware, planned: bytes) -> dict[str, Path]:
    """Put the XVA's disks together in `dest` (one sparse raw file each, named by `file_of`), every
    chunk checked; the files by VDI id. The caller removes `dest` on failure."""
    label = source.name
    disks: dict[str, _Disk] = {}
    try:
        for described in hardware.disks:
            assert described.capacity is not None
            path = dest / file_of(described.file)
            disks[described.file] = _Disk(path, described.capacity, create(path, described.capacity))
        members = sum(2 * -(-d.size // CHUNK) + 2 for d in disks.values()) + 4
        job = _Assembly(label, planned, disks)
        walk(source, label, plain_limits(source, members), job.visit, directories=True, unique=False)
        if job.pending is not None:
            raise job.refuse(f"chunk {job.pending[0]}/{job.pending[1]:08d} has no checksum")
        for ref, disk in disks.items():
            if not disk.complete:
                raise RejectedError(
                    f"archive {label} is truncated: disk {ref}'s last chunk is missing",
                    hint="copy the XVA again from where it was exported",
                )
    finally:
        for disk in disks.values():
            os.close(disk.fd)
    return {ref: disk.path for ref, disk in disks.items()}


def xxh64(data: bytes) -> int:
    """XXH64 of `data` with seed 0: libxxhash's when the host has it, else this module's own."""
    library = _library()
    if library is not None:
        return int(library.XXH64(data, len(data), ctypes.c_ulonglong(0)))
    return xxh64_python(data)


@cache
def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("xxhash") or "libxxhash.so.0"
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return None
    library.XXH64.restype = ctypes.c_ulonglong
    library.XXH64.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_ulonglong)
    return library


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _M64


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _M64, 31) * _P1) & _M64


def xxh64_python(data: bytes) -> int:
    """XXH64 (seed 0) in plain Python: slow (a few MiB/s), for hosts without libxxhash."""
    size, at = len(data), 0
    if size >= 32:
        acc = [(_P1 + _P2) & _M64, _P2, 0, (-_P1) & _M64]
        while at + 32 <= size:
            for lane in range(4):
                acc[lane] = _round(
                    acc[lane], int.from_bytes(data[at + 8 * lane : at + 8 * lane + 8], "little")
                )
            at += 32
        digest = (_rotl(acc[0], 1) + _rotl(acc[1], 7) + _rotl(acc[2], 12) + _rotl(acc[3], 18)) & _M64
        for lane in acc:
            digest = (((digest ^ _round(0, lane)) * _P1) + _P4) & _M64
    else:
        digest = _P5
    digest = (digest + size) & _M64
    while at + 8 <= size:
        digest = (
            (_rotl(digest ^ _round(0, int.from_bytes(data[at : at + 8], "little")), 27) * _P1) + _P4
        ) & _M64
        at += 8
    if at + 4 <= size:
        digest = (
            (_rotl(digest ^ (int.from_bytes(data[at : at + 4], "little") * _P1) & _M64, 23) * _P2) + _P3
        ) & _M64
        at += 4
    while at < size:
        digest = (_rotl(digest ^ (data[at] * _P5) & _M64, 11) * _P1) & _M64
        at += 1
    digest ^= digest >> 33
    digest = (digest * _P2) & _M64
    digest ^= digest >> 29
    digest = (digest * _P3) & _M64
    return digest ^ (digest >> 32)
