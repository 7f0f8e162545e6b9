"""Synthetic 64-bit ELF files for tests: a machine, optional PT_INTERP and PT_NOTE notes."""

from __future__ import annotations

import struct

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
X86_64, AARCH64 = 62, 183


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def note(name: bytes, ntype: int, desc: bytes = b"\0\0\0\0") -> bytes:
    owner = name + b"\0"
    return struct.pack("<III", len(owner), len(desc), ntype) + _pad4(owner) + _pad4(desc)


def make_elf(machine: int = X86_64, *, notes: list[bytes] | None = None, interp: bool = False) -> bytes:
    """An ELF header, program headers for the notes (one PT_NOTE) and an optional PT_INTERP."""
    payload_parts: list[tuple[int, bytes]] = []
    if interp:
        payload_parts.append((3, b"/lib64/ld-linux-x86-64.so.2\0"))
    if notes:
        payload_parts.append((4, b"".join(notes)))
    offset = EHDR.size + PHDR.size * len(payload_parts)
    phdrs, payload = b"", b""
    for ptype, data in payload_parts:
        phdrs += PHDR.pack(ptype, 4, offset + len(payload), 0, 0, len(data), len(data), 4)
        payload += data
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    count = len(payload_parts)
    header = EHDR.pack(ident, 2, machine, 1, 0, EHDR.size, 0, 0, EHDR.size, PHDR.size, count, 0, 0, 0)
    return header + phdrs + payload


def pvh_kernel() -> bytes:
    """A stand-in for an x86_64 kernel ELF carrying the PVH entry note (Xen note type 18)."""
    return make_elf(X86_64, notes=[note(b"Xen", 6), note(b"Xen", 18), note(b"GNU", 3)]) + b"kernel" * 1000
