"""Writing tar members under a directory without ever following a symlink (see `archive`).

Every parent directory is reached through `FdTree` (one component at a time, O_NOFOLLOW), and the
member itself is created relative to its parent's fd with O_EXCL|O_NOFOLLOW (or symlinkat,
linkat, mkdirat). Metadata is set on open fds, or with follow_symlinks=False for symlinks;
directories get theirs at the end, when nothing more will be written inside them.

`exact=True` (virtkit's own backups, storage/backupread.py) restores a tree as it was instead of
making it harmless: setuid and setgid bits are kept, FIFOs and overlayfs whiteouts (0/0 character
devices) are made (any other device node is refused), extended attributes in the `xattrs` set
(and ``user.*``) are set from the members' pax headers (any other is refused), and runs of zero
bytes become holes. `on_data` sees every chunk of file content written (for a checksum).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from virtkit.errors import RejectedError
from virtkit.storage.fdtree import DIR_FLAGS, Blocked, FdTree
from virtkit.storage.tarstream import Limits
from virtkit.units import MiB, format_size

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NAME_MAX = 255
_ID_MAX = 2**32 - 2
OPAQUE = ".wh..wh..opq"
WHITEOUT = ".wh."
PAX_XATTR = "SCHILY.xattr."
_HOLE = 64 * 1024  # zero runs of this size (aligned) are left as holes in exact mode
_ZEROS = bytes(_HOLE)


@dataclass
class ExtractStats:
    """What an extraction wrote, and what it left out."""

    members: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    skipped_devices: int = 0  # character and block devices, FIFOs
    stripped_setuid: int = 0
    whiteouts: int = 0
    bytes: int = 0  # content of regular files


class Members:
    """Adds members of one archive under `dest`; `stats` says what was written."""

    def __init__(
        self,
        dest: str | os.PathLike[str],
        label: str,
        limits: Limits,
        *,
        layer: bool,
        owners: bool,
        strict: bool,
        exact: bool = False,
        xattrs: frozenset[str] = frozenset(),
        on_data: Callable[[bytes], None] | None = None,
    ) -> None:
        self.stats = ExtractStats()
        self._exact, self._xattrs, self._on_data = exact, xattrs, on_data
        self.label = label
        self._limits = (limits.max_members, limits.max_path, limits.max_bytes)
        self._layer, self._strict = layer, strict
        self._owners = owners and os.geteuid() == 0  # only root may give files away
        self._content = 0
        self._dirs: dict[str, tuple[int, int, int, float]] = {}  # deferred directory metadata
        self._created: set[str] = set()  # paths this layer made (and their parents)
        self._skipped: set[str] = set()  # device nodes left out, for hard links to them
        self._tree = FdTree(dest, on_mkdir=self._mark_created if layer else None)

    def refuse(self, name: str, why: str) -> RejectedError:
        return RejectedError(f"archive {self.label} is refused: member {name!r} {why}")

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        self.stats.members += 1
        if self.stats.members > self._limits[0]:
            too_many = f"it has more than {self._limits[0]} members"
            raise RejectedError(f"archive {self.label} is refused: {too_many}")
        parts = self._split(name, name)
        if self._owners and not (0 <= member.uid <= _ID_MAX and 0 <= member.gid <= _ID_MAX):
            raise self.refuse(name, f"has an impossible owner {member.uid}:{member.gid}")
        if not parts:
            if not member.isdir():
                raise self.refuse(name, "names the destination itself but is not a directory")
            self._dirs[""] = self._meta(member)
            return
        try:
            if self._layer and parts[-1].startswith(WHITEOUT):
                self._whiteout(parts, name)
                return
            self._dispatch(tar, member, parts)
        except Blocked as blocked:
            raise self.refuse(
                name, f"would be written through {blocked.where!r}, a symlink or a file"
            ) from None
        if self._layer:
            self._mark_created(parts)

    def _dispatch(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str]) -> None:
        if member.isreg():
            self._file(tar, member, parts)
        elif member.isdir():
            self._dir(member, parts)
        elif member.issym():
            self._symlink(member, parts)
        elif member.islnk():
            self._hardlink(member, parts)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._device(member, parts)
        else:
            raise self.refuse(member.name, f"has an unsupported type {member.type!r}")

    def _split(self, path: str, name: str, link: bool = False) -> list[str]:
        what = f"is a hard link to {path!r}, which" if link else "has a path that"
        if "\0" in path:
            raise self.refuse(name, f"{what} holds a NUL byte")
        if path.startswith("/"):
            raise self.refuse(name, f"{what} is absolute")
        if len(os.fsencode(path)) > self._limits[1]:
            raise self.refuse(name, f"{what} is longer than {self._limits[1]} bytes")
        parts = [part for part in path.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self.refuse(name, f"{what} climbs out of the destination with '..'")
        if any(len(os.fsencode(part)) > _NAME_MAX for part in parts):
            raise self.refuse(name, f"{what} has a component longer than {_NAME_MAX} bytes")
        return parts

    def _mark_created(self, parts: list[str]) -> None:
        for end in range(len(parts), 0, -1):
            key = "/".join(parts[:end])
            if key in self._created:
                return
            self._created.add(key)

    # -- member kinds -----------------------------------------------------------------------------

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str]) -> None:
        self._content += member.size
        if self._content > self._limits[2]:
            raise self.refuse(member.name, f"takes the files past {format_size(self._limits[2])} in all")
        parent = self._tree.parent(parts)
        try:
            self._tree.clear(parent, parts[-1], keep_dir=False)
            fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            source = tar.extractfile(member)
            assert source is not None
            while chunk := source.read(1 * MiB):
                if self._on_data is not None:
                    self._on_data(chunk)
                self._write(fd, chunk)
                self.stats.bytes += len(chunk)
            if self._exact:
                os.ftruncate(fd, member.size)  # a file ending in a hole
            mode, uid, gid, mtime = self._meta(member)
            if self._owners:
                os.fchown(fd, uid, gid)
            self._set_xattrs(fd, member)  # after chown, which drops file capabilities
            os.fchmod(fd, mode)  # after chown, which would clear setgid bits
            _utime(mtime, lambda ns: os.utime(fd, ns=ns))
        finally:
            os.close(fd)
        self.stats.files += 1

    def _write(self, fd: int, chunk: bytes) -> None:
        """Write `chunk` at the file offset; in exact mode, aligned zero runs are skipped (holes)."""
        view = memoryview(chunk)
        if self._exact:
            while len(view) >= _HOLE and view[:_HOLE] == _ZEROS:
                os.lseek(fd, _HOLE, os.SEEK_CUR)
                view = view[_HOLE:]
        while view:
            view = view[os.write(fd, view) :]

    def _set_xattrs(self, fd: int, member: tarfile.TarInfo) -> None:
        """Exact mode: the member's extended attributes, each one allowed (RejectedError otherwise)."""
        if not self._exact:
            return  # other imports leave extended attributes out
        for key, value in member.pax_headers.items():
            if not key.startswith(PAX_XATTR):
                continue
            name = key[len(PAX_XATTR) :]
            if not (name in self._xattrs or name.startswith("user.")):
                raise self.refuse(member.name, f"carries the extended attribute {name!r}, not accepted here")
            os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))

    def _dir(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        parent = self._tree.parent(parts)
        try:
            if not self._tree.clear(parent, parts[-1], keep_dir=True):
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
            if self._exact and member.pax_headers:
                fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
                try:
                    self._set_xattrs(fd, member)
                finally:
                    os.close(fd)
        finally:
            os.close(parent)
        self._dirs["/".join(parts)] = self._meta(member)
        self.stats.dirs += 1

    def _symlink(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        target = member.linkname
        if not target or "\0" in target or len(os.fsencode(target)) >= 4096:
            raise self.refuse(member.name, "is a symlink with an empty, NUL-holding or overlong target")
        parent = self._tree.parent(parts)
        try:
            self._tree.clear(parent, parts[-1], keep_dir=False)
            os.symlink(target, parts[-1], dir_fd=parent)
            if self._owners:
                os.chown(parts[-1], member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            _utime(member.mtime, lambda ns: os.utime(parts[-1], ns=ns, dir_fd=parent, follow_symlinks=False))
        finally:
            os.close(parent)
        self.stats.symlinks += 1

    def _hardlink(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        name = member.name
        target = self._split(member.linkname, name, link=True)
        if not target:
            raise self.refuse(name, "is a hard link to the destination directory itself")
        if "/".join(target) in self._skipped:
            self._device(member, parts)
            return
        if target == parts:
            return  # a link to itself: nothing to do
        source = self._tree.walk(target[:-1], create=False)
        missing = f"is a hard link to {member.linkname!r}, which is not a file extracted before it"
        if source is None:
            raise self.refuse(name, missing)
        try:
            try:
                mode = os.stat(target[-1], dir_fd=source, follow_symlinks=False).st_mode
            except FileNotFoundError:
                raise self.refuse(name, missing) from None
            if stat.S_ISDIR(mode):
                raise self.refuse(name, f"is a hard link to the directory {member.linkname!r}")
            parent = self._tree.parent(parts)
            try:
                self._tree.clear(parent, parts[-1], keep_dir=False)
                os.link(target[-1], parts[-1], src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)
        finally:
            os.close(source)
        self.stats.hardlinks += 1

    def _device(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        if self._exact:
            self._node(member, parts)
            return
        if self._strict:
            raise self.refuse(member.name, "is a device node or FIFO, which imports do not accept")
        parent = self._tree.parent(parts)
        try:
            self._tree.clear(parent, parts[-1], keep_dir=False)  # it still hides what was there before
        finally:
            os.close(parent)
        self._skipped.add("/".join(parts))
        self.stats.skipped_devices += 1

    def _node(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        """Exact mode: a FIFO, or an overlayfs whiteout (a 0/0 character device); nothing else."""
        whiteout = member.ischr() and (member.devmajor, member.devminor) == (0, 0)
        if not (whiteout or member.isfifo()) or member.islnk():
            raise self.refuse(member.name, "is a device node, which imports do not accept")
        mode, uid, gid, mtime = self._meta(member)
        parent = self._tree.parent(parts)
        try:
            self._tree.clear(parent, parts[-1], keep_dir=False)
            if whiteout:
                os.mknod(parts[-1], stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)
            else:
                os.mkfifo(parts[-1], 0o600, dir_fd=parent)
            if self._owners:
                os.chown(parts[-1], uid, gid, dir_fd=parent, follow_symlinks=False)
            os.chmod(parts[-1], mode, dir_fd=parent)  # a node made just now, not a symlink
            _utime(mtime, lambda ns: os.utime(parts[-1], ns=ns, dir_fd=parent, follow_symlinks=False))
        finally:
            os.close(parent)
        self.stats.whiteouts += whiteout

    # -- whiteouts (layers) -----------------------------------------------------------------------

    def _whiteout(self, parts: list[str], name: str) -> None:
        base, dirs = parts[-1], parts[:-1]
        if base.startswith(WHITEOUT * 2) and base != OPAQUE:
            return  # AUFS bookkeeping (.wh..wh.plnk, ...), meaningless outside AUFS
        self.stats.whiteouts += 1
        if base == OPAQUE:
            fd = self._tree.walk(dirs, create=True)
            assert fd is not None
            self._mark_created(dirs)
        else:
            hidden = base[len(WHITEOUT) :]
            if hidden in ("", ".", ".."):
                raise self.refuse(name, "is a whiteout of nothing")
            if "/".join([*dirs, hidden]) in self._created:
                return  # a whiteout hides lower layers only
            fd = self._tree.walk(dirs, create=False)
            if fd is None:
                return
        self._tree.forget()
        try:
            if base == OPAQUE:
                self._opaque(fd, "/".join(dirs))
            else:
                self._tree.clear(fd, hidden, keep_dir=False)
        finally:
            os.close(fd)

    def _opaque(self, fd: int, prefix: str) -> None:
        """Empty directory `fd` of all the lower layers put there, keeping this layer's entries."""
        with os.scandir(fd) as entries:
            found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        for entry, is_dir in found:
            key = f"{prefix}/{entry}" if prefix else entry
            if key in self._created:
                if is_dir:
                    sub = os.open(entry, DIR_FLAGS, dir_fd=fd)
                    try:
                        self._opaque(sub, key)
                    finally:
                        os.close(sub)
            elif is_dir:
                shutil.rmtree(entry, dir_fd=fd)
            else:
                os.unlink(entry, dir_fd=fd)

    # -- metadata ---------------------------------------------------------------------------------

    def _meta(self, member: tarfile.TarInfo) -> tuple[int, int, int, float]:
        mode = member.mode & 0o7777
        if self._exact:
            return mode, member.uid, member.gid, float(member.mtime)
        # setuid anywhere, and setgid on files, grant privileges; setgid on a directory only
        # passes its group on to new files, so it stays.
        dropped = mode & (0o4000 if member.isdir() else 0o6000)
        if dropped:
            self.stats.stripped_setuid += 1
        return mode & ~dropped, member.uid, member.gid, float(member.mtime)

    def finish(self) -> None:
        """Give directories their owners, modes and times, now that nothing more goes inside."""
        self._tree.forget()
        for key, (mode, uid, gid, mtime) in self._dirs.items():
            parts = key.split("/") if key else []
            fd = self._tree.open_dir(parts)
            if fd is None:
                continue  # replaced by a later member
            try:
                if self._owners:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                _utime(mtime, lambda ns: os.utime(fd, ns=ns))  # noqa: B023 (called at once)
            finally:
                os.close(fd)

    def close(self) -> None:
        self._tree.close()


def _utime(mtime: float, apply: Callable[[tuple[int, int]], None]) -> None:
    """Set a member's times, ignoring times the filesystem cannot hold (they are cosmetic)."""
    try:
        ns = int(mtime * 1e9)
        apply((ns, ns))
    except (OverflowError, ValueError):
        pass
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOVERFLOW):
            raise
