"""Just enough ELF reading for image builders: a binary's machine, whether it is static, PVH notes.

Only 64-bit little-endian ELF files are understood (x86_64 and aarch64, the architectures virtkit
builds for); anything else reads as "not an ELF file" rather than raising.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
MACHINES = {62: "x86_64", 183: "aarch64"}

PT_NOTE = 4
PT_INTERP = 3
# The note QEMU looks for to boot an uncompressed x86 kernel ELF directly in 32-bit PVH mode.
XEN_ELFNOTE_PHYS32_ENTRY = 18

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


@dataclass(frozen=True)
class Segment:
    type: int
    offset: int
    size: int


def _header(data: bytes) -> tuple[int, int, int, int] | None:
    """(machine, phoff, phentsize, phnum) of a 64-bit little-endian ELF, else None."""
    if len(data) < _EHDR.size or not data.startswith(ELF_MAGIC) or data[4] != 2 or data[5] != 1:
        return None
    fields = _EHDR.unpack_from(data)
    return fields[2], fields[5], fields[9], fields[10]


def machine(data: bytes) -> str | None:
    """The architecture an ELF file is built for ("x86_64", "aarch64"), or None."""
    header = _header(data)
    return MACHINES.get(header[0], f"elf-machine-{header[0]}") if header else None


def segments(data: bytes) -> Iterator[Segment]:
    """The program headers of an ELF file (none for anything that is not one)."""
    header = _header(data)
    if header is None:
        return
    _, phoff, phentsize, phnum = header
    for index in range(phnum):
        start = phoff + index * phentsize
        if start + _PHDR.size > len(data):
            return
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz, _memsz, _align = _PHDR.unpack_from(data, start)
        yield Segment(p_type, p_offset, p_filesz)


def is_static(data: bytes) -> bool:
    """True for an ELF executable that needs no dynamic loader (no PT_INTERP segment)."""
    return _header(data) is not None and all(s.type != PT_INTERP for s in segments(data))


def notes(data: bytes) -> Iterator[tuple[bytes, int]]:
    """(owner name, type) of every note in the PT_NOTE segments."""
    for seg in segments(data):
        if seg.type != PT_NOTE:
            continue
        pos, end = seg.offset, min(seg.offset + seg.size, len(data))
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = data[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            yield name, ntype
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4


def has_pvh_note(data: bytes) -> bool:
    """True when an x86 kernel ELF carries the PVH entry note, so QEMU can boot it as-is."""
    return any(name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY for name, ntype in notes(data))
