"""A server's file tree, streamed as tar from a machine virtkit does not trust, made into a new disk.

`receive_tree` extracts the stream into a fresh directory with `Members` (storage/members.py), the
extractor every virtkit import uses: each member is created relative to its parent's fd with
O_NOFOLLOW, so nothing is written through a symlink; absolute names and `..` are refused; hard
links must point at what was extracted before. As a root filesystem needs, owners (numeric),
setuid/setgid bits, file capabilities (security.capability) and user.* attributes are kept, FIFOs
made and runs of zeros left as holes (`exact` mode); device nodes are left out and counted (a
booted Linux gets /dev from devtmpfs), as are other extended attributes (SELinux labels: a
relabel at first boot makes them again). The tree never leaves the directory, nothing in it is
run, and it is never mounted.

`make_disk` then turns the tree into a raw disk: an MBR with one Linux partition from 1 MiB to the
end, holding an ext4 filesystem made by `mkfs.ext4 -d` straight from the tree (no loop device, no
mount), with the UUID the caller chose, so the copy's fstab (`copy_fstab`) and its kernel
command line can name it before it exists. The filesystem leaves out ext4 features (orphan_file,
metadata_csum) that older guest kernels and e2fsck do not know.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import RejectedError, VirtkitError
from virtkit.images.tools import run_tool
from virtkit.storage.archive import remove_tree
from virtkit.storage.members import PAX_XATTR, ExtractStats, Members
from virtkit.storage.rootpath import resolve_in_root
from virtkit.storage.tarstream import HEADER_BUDGET, Limits
from virtkit.units import MiB, format_size

log = logging.getLogger(__name__)

PARTITION_START = 1 * MiB  # sector 2048, where partitioning tools put the first partition
XATTRS = frozenset({"security.capability"})  # beside user.*, which Members always keeps
MKFS_TIMEOUT = 3600.0
MKFS_FEATURES = "^metadata_csum,^metadata_csum_seed,^orphan_file"
_READ = 1 * MiB
_DEVICE_SPECS = ("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/")

# (bytes received so far)
ByteCount = Callable[[int], None]


@dataclass
class TreeStats:
    extracted: ExtractStats
    received: int = 0  # bytes of tar stream
    devices: int = 0  # device nodes left out
    dropped_xattrs: int = 0  # extended attributes left out (SELinux labels, ACLs, ...)


class _Pipe(io.RawIOBase):
    """The tar stream read from a pipe, bounded: total bytes, and how far tarfile may read past the
    current member (a GNU long name or pax header is held in memory whole)."""

    def __init__(self, fd: int, label: str, limit: int, on_bytes: ByteCount) -> None:
        super().__init__()
        self.fd, self.label, self.limit, self.on_bytes = fd, label, limit, on_bytes
        self.position = 0
        self.last_nonzero = 0
        self.fence = HEADER_BUDGET

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.fence - self.position, _READ)
        if want <= 0:
            raise RejectedError(f"the tar stream from {self.label} is refused: a member header is larger "
                                f"than {format_size(HEADER_BUDGET)}")  # fmt: skip
        data = os.read(self.fd, want)
        view[: len(data)] = data
        stripped = len(data.rstrip(b"\0"))
        if stripped:
            self.last_nonzero = self.position + stripped
        self.position += len(data)
        if self.position > self.limit:
            raise RejectedError(f"the tar stream from {self.label} is refused: it is larger than "
                                f"{format_size(self.limit)}")  # fmt: skip
        self.on_bytes(self.position)
        return len(data)

    def drain(self) -> None:
        self.fence = self.limit + 1
        while self.read(_READ):
            pass


class _RootMembers(Members):
    """Members as a root filesystem has them: device nodes and unknown attributes left out."""

    def __init__(self, dest: Path, label: str, limits: Limits) -> None:
        super().__init__(
            dest, label, limits, layer=False, owners=True, strict=False, exact=True, xattrs=XATTRS
        )
        self.devices = 0
        self.dropped = 0
        self._left_out: set[str] = set()

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if member.ischr() or member.isblk() or (member.islnk() and member.linkname in self._left_out):
            self.devices += 1
            self._left_out.add(member.name)
            return
        headers = dict(member.pax_headers)
        for key in [k for k in headers if k.startswith(PAX_XATTR)]:
            name = key[len(PAX_XATTR) :]
            if name not in XATTRS and not name.startswith("user."):
                del headers[key]
                self.dropped += 1
        member.pax_headers = headers
        super().add(tar, member)


def receive_tree(fd: int, dest: Path, *, label: str, limit: int, on_bytes: ByteCount) -> TreeStats:
    """Extract the tar stream read from `fd` into the new directory `dest` (see the module's doc).

    RejectedError for a stream refused or cut off; on any failure `dest` is removed.
    """
    dest.mkdir(mode=0o755)
    pipe = _Pipe(fd, label, limit, on_bytes)
    members = _RootMembers(dest, label, Limits(max_bytes=limit, max_members=50_000_000))
    try:
        try:
            _extract(pipe, members)
        finally:
            members.close()
    except OSError as exc:
        remove_tree(dest)
        raise VirtkitError(
            f"cannot write the files from {label} into {dest}: {exc.strerror or exc}"
        ) from None
    except BaseException:
        remove_tree(dest)
        raise
    return TreeStats(members.stats, pipe.position, members.devices, members.dropped)


def _extract(pipe: _Pipe, members: Members) -> None:
    name = ""
    try:
        with tarfile.open(fileobj=pipe, mode="r|", bufsize=_READ) as tar:
            while (member := tar.next()) is not None:
                name = member.name
                pipe.fence = tar.offset + HEADER_BUDGET
                members.add(tar, member)
                vars(tar)["members"].clear()  # tarfile keeps every TarInfo otherwise
            end = tar.offset
    except (tarfile.TarError, ValueError) as exc:
        where = f" after {name!r}" if name else ""
        raise RejectedError(f"the tar stream from {pipe.label} is cut off or corrupt{where}: {exc}") from None
    members.finish()
    pipe.drain()
    if pipe.position < end + tarfile.BLOCKSIZE:
        raise RejectedError(f"the tar stream from {pipe.label} ends after {name!r} without its end marker")
    if pipe.last_nonzero > end:
        raise RejectedError(f"the tar stream from {pipe.label} has data after its end")


# --- the copy's fstab ----------------------------------------------------------------------------


def copy_fstab(text: str, fs_uuid: str, merged: set[str]) -> tuple[str, list[str]]:
    """The copy's fstab: `/` on UUID=`fs_uuid`; every other filesystem on a local device commented
    out (the copy is one disk: those copied into / are in it, the others are not there), swap
    devices too; what needs no local device (network mounts, tmpfs, swap files) kept, and entries
    marked noauto or nofail. Returns the text and what was changed."""
    lines, changes = [], []
    root_seen = False
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) < 3:
            lines.append(line)
            continue
        spec, target, options = fields[0], fields[1], fields[3].split(",") if len(fields) > 3 else []
        if target == "/" and not root_seen:
            root_seen = True
            fields[0], fields[2] = f"UUID={fs_uuid}", "ext4"
            lines.append("\t".join(fields))
            changes.append(f"fstab: / is now UUID={fs_uuid} (ext4), was {spec}")
            continue
        device = spec.startswith(_DEVICE_SPECS)
        if target == "/" or (device and "noauto" not in options and "nofail" not in options):
            why = "copied into /" if target in merged else "its device is not in the copy"
            lines.append(f"# virtkit p2v: {why}: {line}")
            changes.append(f"fstab: {target} ({spec}) commented out: {why}")
        else:
            lines.append(line)
    if not root_seen:
        lines.append(f"UUID={fs_uuid}\t/\text4\tdefaults,errors=remount-ro\t0\t1")
        changes.append(f"fstab: / added on UUID={fs_uuid}")
    return "\n".join(lines) + "\n", changes


def rewrite_fstab(tree: Path, fs_uuid: str, merged: set[str]) -> list[str]:
    """Rewrite etc/fstab inside the untrusted `tree` (its path resolved inside the tree only)."""
    etc = resolve_in_root(tree, "etc")
    if etc is None or etc.is_symlink() or not etc.is_dir():
        raise RejectedError("the copied tree has no /etc directory: it is not a Linux root filesystem")
    path = resolve_in_root(tree, "etc/fstab") or etc / "fstab"
    text = ""
    if path.exists():
        if path.is_symlink() or not path.is_file():
            raise RejectedError("the copy's /etc/fstab is not a regular file")
        with path.open("rb") as handle:
            text = handle.read(1 * MiB).decode(errors="replace")
    new, changes = copy_fstab(text, fs_uuid, merged)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(new)
    return changes


# --- the disk --------------------------------------------------------------------------------------


def mbr(disk_size: int) -> bytes:
    """A DOS partition table with one Linux partition (type 83) from 1 MiB to the end of the disk."""
    sectors = (disk_size - PARTITION_START) // 512
    entry = struct.pack(
        "<B3sB3sII", 0, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", PARTITION_START // 512, sectors
    )
    table = bytearray(512)
    table[440:444] = secrets.token_bytes(4)  # the disk signature
    table[446:462] = entry
    table[510:512] = b"\x55\xaa"
    return bytes(table)


def make_disk(tree: Path, raw: Path, size: int, fs_uuid: str) -> None:
    """A raw disk of `size` bytes (whole MiB): the MBR, then ext4 holding `tree` with `fs_uuid`."""
    if size % MiB or size <= PARTITION_START:
        raise ValueError(f"disk size {size} is not a whole number of MiB above 1 MiB")
    with raw.open("wb") as handle:
        handle.write(mbr(size))
        handle.truncate(size)
    fs_kib = (size - PARTITION_START) // 1024
    run_tool(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-U",
            fs_uuid,
            "-O",
            MKFS_FEATURES,
            "-E",
            f"offset={PARTITION_START}",
            "-d",
            str(tree),
            str(raw),
            f"{fs_kib}k",
        ],
        timeout=MKFS_TIMEOUT,
        what="making the ext4 filesystem of the copy",
        package="e2fsprogs",
    )
