"""A directory tree reached only through fds opened without following symlinks.

`FdTree` hands out fds of directories under its root, walking one component at a time with
O_DIRECTORY|O_NOFOLLOW from the root's fd. Whatever symlinks an untrusted archive has planted in
the tree, a walk either reaches a real directory inside it or stops: it never lands outside.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Blocked(Exception):
    """A path runs through a symlink or a non-directory at `where` (relative to the root)."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


class FdTree:
    """The tree at `root`; `on_mkdir(parts)` is told of every directory a walk creates."""

    def __init__(self, root: str | os.PathLike[str], on_mkdir: Callable[[list[str]], None] | None = None):
        self._root = os.open(root, DIR_FLAGS)
        self._on_mkdir = on_mkdir
        self._cache: tuple[str, int] | None = None  # the last parent directory walked to

    def walk(self, dirs: list[str], create: bool) -> int | None:
        """An fd (the caller closes it) of directory `dirs`, every component a real directory.

        Missing components are made (mode 0755) when `create`, else the answer is None. A symlink
        or file on the way raises Blocked when `create`, else the answer is None.
        """
        fd = os.dup(self._root)
        try:
            for depth, component in enumerate(dirs, start=1):
                try:
                    next_fd = os.open(component, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    next_fd = self._mkdir(fd, component, dirs[:depth])
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    if not create:
                        os.close(fd)
                        return None
                    raise Blocked("/".join(dirs[:depth])) from None
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _mkdir(self, parent: int, component: str, parts: list[str]) -> int:
        os.mkdir(component, 0o700, dir_fd=parent)
        fd = os.open(component, DIR_FLAGS, dir_fd=parent)
        os.fchmod(fd, 0o755)  # a parent the archive did not list; the umask has no say
        if self._on_mkdir is not None:
            self._on_mkdir(parts)
        return fd

    def parent(self, parts: list[str]) -> int:
        """An fd (the caller closes it) of the directory that will hold parts[-1], made if missing;
        remembered, as consecutive members mostly share their directory."""
        key = "/".join(parts[:-1])
        if self._cache is not None and self._cache[0] == key:
            return os.dup(self._cache[1])
        fd = self.walk(parts[:-1], create=True)
        assert fd is not None
        self.forget()
        self._cache = (key, os.dup(fd))
        return fd

    def forget(self) -> None:
        """Drop the remembered parent (call before removing any directory)."""
        if self._cache is not None:
            os.close(self._cache[1])
            self._cache = None

    def clear(self, parent: int, base: str, keep_dir: bool) -> bool:
        """Remove what is at `base` in `parent`; a directory is kept (and True returned) with
        `keep_dir`. Symlinks are removed, never followed."""
        try:
            mode = os.stat(base, dir_fd=parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(mode):
            os.unlink(base, dir_fd=parent)
        elif keep_dir:
            return True
        else:
            self.forget()  # the remembered directory may be inside
            shutil.rmtree(base, dir_fd=parent)
        return False

    def open_dir(self, parts: list[str]) -> int | None:
        """An fd of directory `parts` if it is (still) a real directory, else None; never creates."""
        parent = self.walk(parts[:-1], create=False)
        if parent is None or not parts:
            return parent
        try:
            return os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        finally:
            os.close(parent)

    def close(self) -> None:
        self.forget()
        if self._root >= 0:
            os.close(self._root)
            self._root = -1
