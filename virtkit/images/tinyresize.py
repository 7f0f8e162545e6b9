"""resize2fs for the tiny initramfs: e2fsprogs' binary and the shared libraries it loads.

A tiny VM whose disk was made bigger than its image's (`virtkit launch --disk 8GiB`) grows its ext4
root filesystem at boot, online, before switching to it (see tinyinit's INITRAMFS_INIT). busybox
has no resize2fs, so the initramfs carries e2fsprogs' one, its libraries (libext2fs, libe2p,
libcom_err, libc) and the dynamic loader, each at the path the binary asks for, as
initramfs-tools' copy_exec does. A native build takes the host's own binary and the libraries
`ldd` finds for it; a foreign one takes Debian's packages for the guest's architecture, unpacked in
the cache like its kernel, with the libraries named by the binary's DT_NEEDED entries.
"""

from __future__ import annotations

import logging
import platform
import re
import struct
from collections.abc import Sequence
from pathlib import Path

from virtkit.errors import HostCapabilityError, RejectedError
from virtkit.images import elf
from virtkit.images.debcache import AptRoot, debian_arch, fetch_unpacked, prune
from virtkit.images.tools import require_tool, run_tool

log = logging.getLogger(__name__)

RESIZE2FS = "sbin/resize2fs"  # where the guest finds it (its PATH has /sbin)
LDD_TIMEOUT = 10.0
# Debian packages holding resize2fs and what it links (bookworm: libe2p is in libext2fs2).
PACKAGES = ("e2fsprogs", "libext2fs2", "libcom-err2", "libc6")
LIBRARY_DIRS: dict[str, tuple[str, str]] = {
    "x86_64": ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"),
    "aarch64": ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu"),
}

# One file of the initramfs: (path without leading /, contents, mode).
File = tuple[str, bytes, int]

_LDD_LINE = re.compile(r"^\s*(?:(\S+) => )?(/\S+) \(0x[0-9a-f]+\)$")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_DYN = struct.Struct("<qQ")
SHT_DYNAMIC = 6
DT_NEEDED = 1


def resize_files(cache: Path, arch: str) -> list[File]:
    """resize2fs and everything it needs to run, for a guest of `arch`."""
    if arch == platform.machine():
        return host_files(Path(require_tool("resize2fs", "e2fsprogs")))
    return debian_files(cache, arch)


def host_files(binary: Path) -> list[File]:
    """The host's `binary` at RESIZE2FS, and the libraries and loader ldd says it loads."""
    done = run_tool(["ldd", binary], timeout=LDD_TIMEOUT, what=f"listing the libraries of {binary}",
                    package="libc-bin")
    files = [(RESIZE2FS, binary.read_bytes(), 0o755)]
    for path in parse_ldd(done.stdout):
        files.append((path.lstrip("/"), Path(path).read_bytes(), 0o755))
    return files


def parse_ldd(text: str) -> list[str]:
    """The absolute paths of the libraries (and loader) in `ldd` output, in its order (pure).

    The vDSO (no path) is the kernel's; a library ldd could not find is an error, since the guest
    would fail the same way.
    """
    paths: list[str] = []
    for line in text.splitlines():
        if "=> not found" in line:
            raise HostCapabilityError(f"resize2fs needs a library this host lacks: {line.strip()}",
                                      hint="reinstall it: apt-get install --reinstall e2fsprogs")
        match = _LDD_LINE.match(line)
        if match and match.group(2) not in paths:
            paths.append(match.group(2))
    return paths


def debian_files(cache: Path, arch: str) -> list[File]:
    """Debian's resize2fs for `arch`, with the libraries its DT_NEEDED names and its loader."""
    apt = AptRoot(cache, debian_arch(arch))
    apt.refresh()
    roots = []
    for name in PACKAGES:
        roots.append(fetch_unpacked(apt, name, apt.show(name)["Version"]))
        prune(apt.cache, name, apt.debarch, keep=roots[-1])  # superseded versions (security updates)
    binary = _find(roots, ["sbin/resize2fs", "usr/sbin/resize2fs"])
    data = binary.read_bytes()
    if elf.machine(data) != arch:
        raise RejectedError(f"{binary} is not built for {arch}")
    files = [(RESIZE2FS, data, 0o755)]
    dirs = LIBRARY_DIRS[arch]
    for name in needed(data):
        library = _find(roots, [f"{d}/{name}" for d in dirs])
        files.append((f"{dirs[0]}/{name}", library.read_bytes(), 0o755))
    loader = interpreter(data)
    if loader is not None:
        found = _find(roots, [loader.lstrip("/"), *(f"{d}/{Path(loader).name}" for d in dirs)])
        files.append((loader.lstrip("/"), found.read_bytes(), 0o755))
    return files


def _find(roots: Sequence[Path], candidates: Sequence[str]) -> Path:
    for root in roots:
        for candidate in candidates:
            path = root / candidate
            if path.exists():
                return _resolve_in(root, path)
    raise RejectedError(f"Debian's e2fsprogs packages hold none of {', '.join(candidates)}")


def _resolve_in(root: Path, path: Path) -> Path:
    """Follow a symlink inside an unpacked package (an absolute target is relative to its root)."""
    for _ in range(8):
        if not path.is_symlink():
            return path
        target = Path(path.readlink())
        path = root / str(target).lstrip("/") if target.is_absolute() else path.parent / target
    raise RejectedError(f"too many symbolic links at {path}")


def needed(data: bytes) -> list[str]:
    """The DT_NEEDED library names of a 64-bit little-endian ELF file, from its section headers (pure)."""
    if elf.machine(data) is None:
        return []
    (shoff,) = struct.unpack_from("<Q", data, 0x28)  # e_shoff, then e_shentsize and e_shnum
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)
                if shoff + (i + 1) * shentsize <= len(data)]
    names: list[str] = []
    for section in sections:
        if section[1] != SHT_DYNAMIC or section[6] >= len(sections):
            continue
        strtab = sections[section[6]]
        offset, size = section[4], section[5]
        for pos in range(offset, min(offset + size, len(data)) - _DYN.size + 1, _DYN.size):
            tag, value = _DYN.unpack_from(data, pos)
            if tag == 0:
                break
            if tag == DT_NEEDED:
                start = strtab[4] + value
                names.append(data[start:data.index(b"\0", start)].decode())
    return names


def interpreter(data: bytes) -> str | None:
    """The dynamic loader a 64-bit ELF executable names (PT_INTERP), None for a static one (pure)."""
    for segment in elf.segments(data):
        if segment.type == elf.PT_INTERP:
            return data[segment.offset:segment.offset + segment.size].rstrip(b"\0").decode()
    return None
