"""Initramfs images written in pure Python: cpio "newc" archives, optionally gzip-compressed.

The kernel unpacks an initramfs from the newc format (the one `cpio -H newc` writes): per member a
110-byte ASCII header, the NUL-terminated name and the data, each padded to 4 bytes, then a
`TRAILER!!!` member. Archives are reproducible: members are written in the order given (trees in
sorted order), with inode numbers counted from 1, owner root and mtime 0.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_SIZE = 110


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


class CpioWriter:
    """Writes a newc cpio archive member by member to a binary stream."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.inode = 0
        self.names: set[str] = set()
        self.closed = False

    def _member(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        if self.closed:
            raise ValueError("the archive is already finished")
        name = name.strip("/") or "."
        if name != TRAILER:
            if name in self.names:
                raise ValueError(f"duplicate member {name!r}")
            self.names.add(name)
        self.inode += 1
        encoded = name.encode() + b"\0"
        fields = (self.inode, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        header = NEWC_MAGIC + b"".join(b"%08x" % value for value in fields)
        self.out.write(header + encoded + _pad(_HEADER_SIZE + len(encoded)))
        self.out.write(data + _pad(len(data)))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._member(name, stat.S_IFDIR | (mode & 0o7777), nlink=2)

    def parents(self, name: str) -> None:
        """Add the directories leading to `name` that are not in the archive yet."""
        parts = name.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            if parent not in self.names:
                self.directory(parent)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._member(name, stat.S_IFREG | (mode & 0o7777), data)

    def symlink(self, name: str, target: str) -> None:
        self._member(name, stat.S_IFLNK | 0o777, target.encode())

    def tree(self, root: Path, prefix: str = "") -> None:
        """Add everything under directory `root` (not root itself), parents before children.

        Only directories, regular files and symbolic links are taken; device nodes, FIFOs and
        sockets are refused (the guest kernel makes /dev itself).
        """
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            for entry in sorted([*dirnames, *filenames]):
                path = base / entry
                name = f"{prefix}/{path.relative_to(root)}".lstrip("/")
                info = path.lstat()
                if stat.S_ISLNK(info.st_mode):
                    self.symlink(name, os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    self.directory(name, info.st_mode)
                elif stat.S_ISREG(info.st_mode):
                    self.file(name, path.read_bytes(), info.st_mode)
                else:
                    raise ValueError(f"{path} is not a file, directory or symbolic link")

    def finish(self) -> None:
        """Write the trailer; nothing can be added afterwards."""
        self._member(TRAILER, 0, nlink=1)
        self.closed = True


def build_initramfs(
    out: Path,
    *,
    rootfs: Path,
    init: str,
    modules: Sequence[tuple[str, bytes, Sequence[str]]],
    release: str,
    module_list: str,
    extra: Sequence[tuple[str, bytes, int]] = (),
    gzip_level: int | None = 6,
) -> int:
    """Write an initramfs: the `rootfs` tree, `/init` (a script), and `modules` ((name, contents,
    conditions) in load order) as /lib/modules/<release>/<name>.ko, listed in that order in
    `module_list`, one "name /lib/modules/<release>/<name>.ko [condition...]" per line; then the
    `extra` files ((path, contents, mode): binaries and their libraries), in the order given.

    `gzip_level` None leaves the archive uncompressed (the kernel reads both). Returns its size.
    """
    buffer = io.BytesIO()
    writer = CpioWriter(buffer)
    writer.tree(rootfs)
    writer.file("init", init.encode(), 0o755)
    if "newroot" not in writer.names:
        writer.directory("newroot")
    moddir = f"lib/modules/{release}"
    writer.parents(f"{moddir}/x")
    listing = []
    for name, data, conditions in modules:
        writer.file(f"{moddir}/{name}.ko", data)
        listing.append(" ".join([name, f"/{moddir}/{name}.ko", *conditions]) + "\n")
    writer.parents(module_list)
    writer.file(module_list, "".join(listing).encode())
    for path, data, mode in extra:
        writer.parents(path)
        writer.file(path, data, mode)
    writer.finish()
    raw = buffer.getvalue()
    data = raw if gzip_level is None else compress(raw, level=gzip_level)
    out.write_bytes(data)
    return len(data)


def compress(raw: bytes, *, level: int = 6) -> bytes:
    """gzip `raw` reproducibly (no name, mtime 0), as the kernel's initramfs unpacker reads it."""
    return gzip.compress(raw, compresslevel=level, mtime=0)
