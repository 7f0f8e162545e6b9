"""What an imported file is, told by its bytes (magic numbers), never by its name alone.

`detect(path)` opens the file (see `source.open_source` for what is refused), reads its first
34 KiB and its last 512 bytes, and names its format with QEMU's names: qcow2, vmdk, vdi, vpc (VHD),
vhdx, raw; or iso, tar, gzip, xz, zstd, bzip2 for the other importers. The rules:

- a known signature decides (qcow2 "QFI\\xfb", VMDK "KDMV", VDI "<<< " + 0xbeda107f at 0x40, VHDX
  "vhdxfile", VHD "conectix" at 0 or in the footer, ISO 9660 "CD001" at 0x8001, tar "ustar" at
  257, gzip/xz/zstd/bzip2 magics);
- an extension that names a format (.qcow2, .vmdk, .vdi, .vhd, .vhdx, .iso, .tar, .gz, ...) must
  agree with the signature, else the file is refused: "x.vmdk is not a VMDK image (it looks like:
  qcow2)";
- raw has no signature, so it is what is left, and only when the user says so: a file named
  `.img` or `.raw` with no known signature is raw (`.img` is also the usual name of qcow2 cloud
  images, so a signature in a `.img` wins; a `.raw` with a signature is refused as ambiguous),
  and `--format raw` takes any file's bytes as they are. Any other unknown file is refused with
  the list of what is accepted;
- formats QEMU knows but virtkit does not import (qcow v1, QED, LUKS, VMDK descriptors that point
  at other files, ...) are refused with how to convert them.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import RejectedError, SpecError
from virtkit.images.source import open_source

log = logging.getLogger(__name__)

DISK_FORMATS = ("qcow2", "raw", "vmdk", "vdi", "vpc", "vhdx")
ARCHIVE_FORMATS = ("tar", "gzip", "xz", "zstd", "bzip2")
ACCEPTED = (*DISK_FORMATS, "iso", *ARCHIVE_FORMATS)
ALIASES = {"vhd": "vpc"}

NAMES = {
    "qcow2": "qcow2", "raw": "raw", "vmdk": "VMDK", "vdi": "VDI", "vpc": "VHD", "vhdx": "VHDX",
    "iso": "ISO 9660", "tar": "tar", "gzip": "gzip", "xz": "xz", "zstd": "zstd",
    "qcow": "qcow version 1", "qed": "QED", "vmdk3": "VMDK version 3 (COWD)", "luks": "LUKS",
    "vmdk-descriptor": "VMDK descriptor", "parallels": "Parallels", "bzip2": "bzip2",
}  # fmt: skip
ACCEPTED_HINT = (
    "accepted: qcow2, VMDK (single-file), VDI, VHD, VHDX, raw (named .img or .raw, or with "
    "--format raw), ISO 9660, and tar archives (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2)"
)

# Extensions that claim a format. `.img` claims only "a disk image" and is handled apart.
EXTENSIONS = {
    ".qcow2": "qcow2", ".qcow": "qcow2", ".vmdk": "vmdk", ".vdi": "vdi", ".vhd": "vpc",
    ".vpc": "vpc", ".vhdx": "vhdx", ".iso": "iso", ".tar": "tar", ".tgz": "gzip", ".gz": "gzip",
    ".txz": "xz", ".xz": "xz", ".tzst": "zstd", ".zst": "zstd", ".tbz2": "bzip2", ".tbz": "bzip2",
    ".bz2": "bzip2", ".raw": "raw",
}  # fmt: skip
GENERIC_EXTENSIONS = (".img",)

HEAD_SIZE = 0x8800  # through the first ISO 9660 volume descriptor (sector 16)
TAIL_SIZE = 512  # a VHD footer

_QEMU_NAME = {"qed": "qed", "parallels": "parallels", "vmdk3": "vmdk", "qcow": "qcow"}


@dataclass(frozen=True)
class Detected:
    """A file's format, its kind ("disk", "iso" or "archive") and how it was decided."""

    format: str
    kind: str
    how: str  # "signature", "extension" (raw by .img/.raw) or "explicit" (the user's --format)


def canonical_format(name: str) -> str:
    """A format as a user types it ("VHD", "qcow2") → virtkit's name ("vpc"); SpecError if unknown."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in ACCEPTED:
        raise SpecError(f"unknown image format {name!r}", hint=ACCEPTED_HINT.replace("accepted", "use"))
    return key


def kind_of(fmt: str) -> str:
    return "disk" if fmt in DISK_FORMATS else "iso" if fmt == "iso" else "archive"


def sniff(head: bytes, tail: bytes = b"") -> str | None:
    """The format a file's first bytes (`head`, up to HEAD_SIZE) and last 512 (`tail`) show, or
    None when they show none this module knows."""
    if head[:4] == b"QFI\xfb":
        version = struct.unpack(">I", head[4:8])[0] if len(head) >= 8 else 0
        return "qcow2" if version in (2, 3) else "qcow"
    magics = (
        (b"QFI\x00", "qed"),
        (b"KDMV", "vmdk"),
        (b"COWD", "vmdk3"),
        (b"# Disk DescriptorFile", "vmdk-descriptor"),
        (b"vhdxfile", "vhdx"),
        (b"conectix", "vpc"),
        (b"LUKS\xba\xbe", "luks"),
        (b"WithoutFreeSpace", "parallels"),
        (b"WithouFreSpacExt", "parallels"),
        (b"\x1f\x8b\x08", "gzip"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
    )
    for magic, fmt in magics:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"<<< " and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return "vdi"
    if re.match(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)", head):  # a block, or the end of an empty stream
        return "bzip2"
    if head[257:262] == b"ustar":
        return "tar"
    if head[0x8001:0x8006] == b"CD001":
        return "iso"
    if tail[-512:][:8] == b"conectix" and len(tail) >= 512:
        return "vpc"
    return None


def read_ends(fd: int, size: int) -> tuple[bytes, bytes]:
    """The first HEAD_SIZE and the last TAIL_SIZE bytes of an open file of `size` bytes."""
    head = os.pread(fd, HEAD_SIZE, 0)
    tail = os.pread(fd, TAIL_SIZE, max(0, size - TAIL_SIZE)) if size >= TAIL_SIZE else b""
    return head, tail


def detect(path: Path, fmt: str | None = None) -> Detected:
    """Open `path` and tell its format; `fmt` is what the user said (--format), if anything."""
    fd, st = open_source(path)
    try:
        head, tail = read_ends(fd, st.st_size)
    finally:
        os.close(fd)
    return classify(path.name, head, tail, fmt)


def classify(name: str, head: bytes, tail: bytes, fmt: str | None = None) -> Detected:
    """Decide a file's format from its name, its bytes and the user's --format (see module doc)."""
    sniffed = sniff(head, tail)
    if fmt is not None:
        fmt = canonical_format(fmt)
        if fmt == "raw":
            if sniffed is not None:
                log.warning("%s looks like %s; taking its bytes as raw, as asked", name, NAMES[sniffed])
            return Detected("raw", "disk", "explicit")
    if sniffed is not None and sniffed not in ACCEPTED:
        raise _unsupported(name, sniffed, head)
    claim = fmt or _claimed(name)
    if claim == "raw" and sniffed is not None:
        raise RejectedError(
            f"{name} is named as raw data but holds {described(sniffed)}",
            hint=f"pass --format {sniffed} to import it as {NAMES[sniffed]}, "
            "or --format raw to take its bytes as they are",
        )
    if claim is not None and claim != "raw" and sniffed != claim:
        looks = NAMES[sniffed] if sniffed else "no format virtkit knows"
        hint = ACCEPTED_HINT if sniffed else None
        if sniffed is None and kind_of(claim) == "disk":
            hint = "if it is a raw disk image, name it .img or .raw, or pass --format raw"
        raise RejectedError(f"{name} is not {described(claim)} (it looks like: {looks})", hint=hint)
    if sniffed is not None:
        return Detected(sniffed, kind_of(sniffed), "signature")
    if claim == "raw" or name.lower().endswith(GENERIC_EXTENSIONS):
        return Detected("raw", "disk", "extension")
    raise RejectedError(
        f"cannot tell what {name} is: it has no signature of any image or archive format",
        hint=f"{ACCEPTED_HINT}; a raw disk image must be named .img or .raw or given with --format raw",
    )


def described(fmt: str) -> str:
    """ "a qcow2 image", "an ISO 9660 image", "a gzip archive": a format named in a sentence."""
    noun = "archive" if fmt in ARCHIVE_FORMATS else "image"
    article = "an" if NAMES[fmt][0] in "AEIOaeiox" else "a"
    return f"{article} {NAMES[fmt]} {noun}"


def _claimed(name: str) -> str | None:
    lower = name.lower()
    for extension, fmt in EXTENSIONS.items():
        if lower.endswith(extension):
            return fmt
    return None


def _unsupported(name: str, sniffed: str, head: bytes) -> RejectedError:
    if sniffed == "vmdk-descriptor":
        create_type, extents = vmdk_descriptor_summary(head)
        listed = ", ".join(extents) if extents else "none"
        return RejectedError(
            f"{name} is a VMDK descriptor (createType {create_type}) that refers to other files "
            f"(extents: {listed}); virtkit imports only single-file VMDKs",
            hint="import a monolithicSparse or streamOptimized VMDK (as found in an OVA), "
            "or the flat extent file itself with --format raw",
        )
    if sniffed == "luks":
        return RejectedError(
            f"{name} is a LUKS-encrypted image; virtkit imports only unencrypted images",
            hint="decrypt it first (cryptsetup, or qemu-img convert with --object secret,...)",
        )
    return RejectedError(
        f"{name} is {described(sniffed)}, which virtkit does not import",
        hint="convert it to qcow2 first: "
        f"qemu-img convert -f {_QEMU_NAME[sniffed]} -O qcow2 {name} out.qcow2",
    )


_DESC_LINE = re.compile(r'^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"]*)"', re.MULTILINE)
_CREATE_TYPE = re.compile(r'^\s*createType\s*=\s*"([^"]*)"', re.MULTILINE)


def vmdk_descriptor_summary(text: bytes) -> tuple[str, list[str]]:
    """The createType and extent file names of a VMDK text descriptor (shown, never opened)."""
    decoded = text.split(b"\x00", 1)[0].decode("ascii", errors="replace")
    match = _CREATE_TYPE.search(decoded)
    create_type = match.group(1) if match else "unknown"
    extents = [printable(m.group(1)) for m in _DESC_LINE.finditer(decoded)]
    return printable(create_type), extents[:8]


def printable(text: str, limit: int = 120) -> str:
    """Text read from an untrusted file, safe to show: non-printables as '?', cut at `limit`."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."
