"""Paths inside an unpacked, untrusted tree, resolved as if the tree were `/` (like a chroot).

A root filesystem is full of absolute symlinks (``/etc/os-release -> ../usr/lib/os-release``,
``/sbin/init -> /lib/systemd/systemd``) that, followed on the host, would lead out of it. Here an
absolute target restarts at the tree's root and ``..`` stops there, so a lookup never leaves it.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from pathlib import Path

# As the kernel: a path that needs more symlinks than this is a loop.
MAX_LINKS = 40


def resolve_in_root(root: Path, path: str) -> Path | None:
    """The real location under `root` of `path` (absolute or relative to root), symlinks resolved
    inside root; None when it does not exist, a component is not a directory, or links loop."""
    pending = deque(path.split("/"))
    resolved: list[str] = []
    links = 0
    while pending:
        component = pending.popleft()
        if component in ("", "."):
            continue
        if component == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, component)
        try:
            mode = os.lstat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISLNK(mode):
            if pending and not stat.S_ISDIR(mode):
                return None
            resolved.append(component)
            continue
        links += 1
        if links > MAX_LINKS:
            return None
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending.extendleft(reversed(target.split("/")))
    return root.joinpath(*resolved)


def open_in_root(root: Path, path: str) -> int | None:
    """A read-only fd of the regular file `path` inside `root`, or None if there is none."""
    real = resolve_in_root(root, path)
    if real is None:
        return None
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def read_in_root(root: Path, path: str, limit: int = 1 << 20) -> bytes | None:
    """The first `limit` bytes of the regular file `path` inside `root`, or None."""
    fd = open_in_root(root, path)
    if fd is None:
        return None
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)
