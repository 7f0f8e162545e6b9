"""Safety checks on an untrusted image's own headers, made before any QEMU code opens it.

`qemu-img info` opens what an image's metadata points to: a qcow2 external data file, a VMDK's
extents (a "KDMV" file whose capacity is 0 is read as a descriptor listing *other* files, which may
be any path or a network URL). So the headers that can name other files are read here, in Python,
and such images are refused before QEMU sees them; `diskinfo` checks QEMU's view again afterwards.
Also checked here: the virtual size a header claims (so a 100 PiB claim gets a plain message
rather than QEMU's "L1 table is too small"), truncated VDIs (qemu-img check misses them: reads
past the end return zeros), and raw files that are not whole sectors.
"""

from __future__ import annotations

import os
import struct

from virtkit.errors import RejectedError
from virtkit.images.detect import printable, vmdk_descriptor_summary
from virtkit.units import format_size

SECTOR = 512
_SELF_CONTAINED = (
    "virtkit imports only self-contained images; flatten it first where its other files are: "
    "qemu-img convert -O qcow2 IMAGE flat.qcow2"
)
_DECRYPT = (
    "decrypt it first where its key is: qemu-img convert --object secret,... -O qcow2 IMAGE plain.qcow2"
)
_LIMIT_HINT = "images above the size limit are refused; raise the import size limit if this is intended"

# qcow2 header extensions that name or describe other files or encryption.
_QCOW2_DATA_FILE_EXT = 0x44415441
_QCOW2_CRYPTO_EXT = 0x0537BE77
_QCOW2_EXTERNAL_DATA_BIT = 1 << 2


def inspect_headers(fd: int, fmt: str, size: int, name: str, max_virtual_size: int) -> int | None:
    """Refuse (RejectedError) an image whose headers name other files, claim a virtual size above
    `max_virtual_size`, or show truncation. Returns the virtual size the header claims, or None
    for formats whose headers are left to QEMU (vpc, vhdx: QEMU opens no other file for them)."""
    checks = {"qcow2": _qcow2, "vmdk": _vmdk, "vdi": _vdi, "raw": _raw}
    check = checks.get(fmt)
    if check is None:
        return None
    virtual_size = check(fd, size, name)
    if virtual_size > max_virtual_size:
        raise RejectedError(
            f"{name} claims a virtual size of {format_size(virtual_size)}, "
            f"above the limit of {format_size(max_virtual_size)}",
            hint=_LIMIT_HINT,
        )
    return virtual_size


def _read(fd: int, length: int, offset: int, name: str, what: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) < length:
        raise RejectedError(f"{name} is truncated: its {what} is incomplete")
    return data


def _qcow2(fd: int, size: int, name: str) -> int:
    head = _read(fd, 72, 0, name, "qcow2 header")
    version, backing_offset, backing_size, cluster_bits, virtual_size, crypt = struct.unpack(
        ">4xIQIIQI", head[:36]
    )
    if backing_offset or backing_size:
        raw = os.pread(fd, min(backing_size, 1023), backing_offset) if backing_offset else b""
        backing = raw.decode("utf-8", errors="replace")
        if backing.lstrip().startswith("json:"):
            what = "a json: pseudo-filename (which can make QEMU open any file or network resource)"
        else:
            what = repr(printable(backing)) if backing else "an unreadable name"
        raise RejectedError(f"{name} refers to a backing file: {what}", hint=_SELF_CONTAINED)
    if crypt:
        raise RejectedError(f"{name} is encrypted; virtkit imports only unencrypted images", hint=_DECRYPT)
    if not 9 <= cluster_bits <= 21:
        raise RejectedError(f"{name} is not a valid qcow2 image: cluster_bits is {cluster_bits}")
    extensions_at = 72
    if version >= 3:
        incompatible, header_length = struct.unpack(">Q20xI", _read(fd, 32, 72, name, "qcow2 header"))
        if incompatible & _QCOW2_EXTERNAL_DATA_BIT:
            raise RejectedError(f"{name} keeps its data in an external data file", hint=_SELF_CONTAINED)
        extensions_at = header_length
    _qcow2_extensions(fd, name, extensions_at, 1 << cluster_bits)
    return int(virtual_size)


def _qcow2_extensions(fd: int, name: str, offset: int, cluster_size: int) -> None:
    area = os.pread(fd, max(0, cluster_size - offset), offset)
    at = 0
    while at + 8 <= len(area):
        kind, length = struct.unpack(">II", area[at : at + 8])
        if kind == 0:
            return
        if kind == _QCOW2_DATA_FILE_EXT:
            data_file = area[at + 8 : at + 8 + length].decode("utf-8", errors="replace")
            raise RejectedError(
                f"{name} keeps its data in an external data file ({printable(data_file)!r})",
                hint=_SELF_CONTAINED,
            )
        if kind == _QCOW2_CRYPTO_EXT:
            raise RejectedError(
                f"{name} is encrypted; virtkit imports only unencrypted images", hint=_DECRYPT
            )
        at += 8 + (length + 7) // 8 * 8


def _vmdk(fd: int, size: int, name: str) -> int:
    head = _read(fd, 44, 0, name, "VMDK header")
    capacity, _granularity, desc_offset, desc_size = struct.unpack("<QQQQ", head[12:44])
    if capacity == 0:
        raise RejectedError(
            f"{name} is a VMDK whose header declares no capacity, which makes QEMU read its "
            "embedded descriptor as a list of other files to open",
            hint="import a monolithicSparse or streamOptimized VMDK",
        )
    if desc_offset and desc_size:
        text = os.pread(fd, min(desc_size * SECTOR, 64 * 1024), desc_offset * SECTOR)
        create_type, _extents = vmdk_descriptor_summary(text)
        if create_type not in ("monolithicSparse", "streamOptimized", "unknown"):
            raise RejectedError(
                f"{name} is a VMDK of type {create_type}; virtkit imports single-file VMDKs only",
                hint="import a monolithicSparse or streamOptimized VMDK",
            )
        if _vmdk_has_parent(text):
            raise RejectedError(
                f"{name} is a VMDK delta disk with a parent (backing) disk", hint=_SELF_CONTAINED
            )
    return int(capacity) * SECTOR


def _vmdk_has_parent(text: bytes) -> bool:
    decoded = text.split(b"\x00", 1)[0].decode("ascii", errors="replace")
    for line in decoded.splitlines():
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip().strip('"').lower()
        if key == "parentFileNameHint" or (key == "parentCID" and value not in ("ffffffff", "")):
            return True
    return False


def _vdi(fd: int, size: int, name: str) -> int:
    head = _read(fd, 0x188, 0, name, "VDI header")
    offset_data = struct.unpack("<I", head[0x158:0x15C])[0]
    virtual_size, block_size, _extra, _blocks, allocated = struct.unpack("<QIIII", head[0x170:0x188])
    needed = offset_data + allocated * block_size
    if size < needed:
        raise RejectedError(
            f"{name} is truncated: its {allocated} allocated blocks end at byte {needed} "
            f"but the file has {size} bytes",
            hint="copy the image again from its source",
        )
    return int(virtual_size)


def _raw(fd: int, size: int, name: str) -> int:
    if size % SECTOR:
        raise RejectedError(
            f"{name} is {size} bytes, not a whole number of {SECTOR}-byte sectors: not a raw disk image",
            hint="a raw disk image is a byte-for-byte copy of a disk",
        )
    return size
