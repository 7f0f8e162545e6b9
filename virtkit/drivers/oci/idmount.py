"""Idmapped mounts (Linux 5.12+): a directory tree shown with its owners shifted into a container's
ids, without copying a file or changing one on disk.

The new mount API does it in three calls, made through ctypes (Python has no binding; the
numbers are the same on every architecture since Linux 5.1 unified new syscalls' numbers):

- open_tree(OPEN_TREE_CLONE): a detached copy of the bind mount of the tree;
- mount_setattr(MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY): it shows the on-disk id N as the id N
  maps to in a user namespace, given by a file descriptor of that namespace;
- move_mount: attach it at a directory.

The namespace's descriptor comes from a short-lived forked child in a new user namespace whose
uid_map and gid_map virtkit (host root) writes, as LXC and systemd-nspawn do: a namespace outlives
its last process while a descriptor of it is open, and the mount keeps its own reference. The
overlay mount and unmount are system calls here too: no mount(8) process per container start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
from collections.abc import Iterator
from pathlib import Path

from virtkit.errors import HostCapabilityError

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x100000
MNT_DETACH = 0x2
UNSHARE_TIMEOUT = 10.0
CLONE_NEWUSER = 0x10000000


class MountAttr(ctypes.Structure):
    """struct mount_attr (linux/mount.h)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_umount2 = _libc.umount2
_umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_mount = _libc.mount
_mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.unshare.argtypes = (ctypes.c_int,)


def _check(result: int, what: str, path: Path | str = "") -> int:
    if result < 0:
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            hint = "run Linux 5.12 or later"
            raise HostCapabilityError(f"this kernel has no {what}(2) (idmapped mounts)", hint=hint)
        raise OSError(code, f"{what}: {os.strerror(code)}", str(path))
    return int(result)


@contextlib.contextmanager
def user_namespace(uid: int, gid: int, size: int) -> Iterator[int]:
    """A descriptor of a new user namespace mapping ids 0..size-1 to uid.../gid... on the host.

    The namespace is made by a forked child (unshare(2), then it waits on a pipe); virtkit writes
    its maps, opens its namespace and lets it exit. OSError when the host refuses user namespaces
    (max_user_namespaces 0: ENOSPC) or the mapping.
    """
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    limit = os.sysconf("SC_OPEN_MAX")
    low, high = sorted((ready_w, hold_r))
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe calls, then _exit
        try:
            # Every descriptor but its two ends goes: a child forked meanwhile by another thread
            # holds copies of the parent's, and one that kept this child's hold_w would never let
            # it see EOF (two parallel container starts waited on each other for ever).
            os.closerange(3, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, limit)
            code = 0 if _libc.unshare(CLONE_NEWUSER) == 0 else ctypes.get_errno() or 1
            os.write(ready_w, bytes([min(code, 255)]))
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    try:
        answer = _read_within(ready_r, UNSHARE_TIMEOUT)
        if answer != b"\0":
            code = answer[0] if answer else errno.EPERM
            raise OSError(code, f"cannot make a user namespace: {os.strerror(code)}")
        for name, base in (("uid_map", uid), ("gid_map", gid)):
            Path(f"/proc/{pid}/{name}").write_text(f"0 {base} {size}\n")
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(hold_w)  # the child's read ends: it exits, the namespace lives on through fd
        os.close(ready_r)
        os.waitpid(pid, 0)
    try:
        yield fd
    finally:
        os.close(fd)


def _read_within(fd: int, timeout: float) -> bytes:
    ready, _w, _x = select.select([fd], [], [], timeout)
    return os.read(fd, 1) if ready else b""


def mount_overlay(options: str, target: Path) -> None:
    """mount -t overlay overlay -o OPTIONS TARGET, as one system call."""
    _check(_mount(b"overlay", os.fsencode(target), b"overlay", 0, os.fsencode(options)), "mount", target)


def unmount(target: Path) -> None:
    """umount TARGET, as one system call."""
    _check(_umount2(os.fsencode(target), 0), "umount2", target)


def attach_idmapped(source: Path, target: Path, uid: int, gid: int, size: int) -> None:
    """Attach at `target` a read-only clone of `source` (a directory) whose files owned by id N
    (N < size) show as owned by uid+N / gid+N; the tree itself is untouched."""
    with user_namespace(uid, gid, size) as userns:
        tree = clone_tree(source, MOUNT_ATTR_RDONLY, userns)
        try:
            move_tree(tree, target)
        finally:
            os.close(tree)


def clone_tree(source: Path, attrs: int, userns: int | None = None) -> int:
    """A descriptor of a detached clone of the bind mount of directory `source` (not followed if a
    symlink), with mount attributes `attrs` (MOUNT_ATTR_*) set; idmapped through the user namespace
    `userns` (a descriptor) when given. It vanishes when the descriptor is closed unless moved."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_SYMLINK_NOFOLLOW
    tree = _check(_syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source), flags), "open_tree", source)
    try:
        if userns is not None:
            attrs |= MOUNT_ATTR_IDMAP
        if attrs:
            attr = MountAttr(attrs, 0, 0, userns if userns is not None else 0)
            _check(_syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attr),
                            ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr", source)  # fmt: skip
    except BaseException:
        os.close(tree)
        raise
    return tree


def move_tree(tree: int, target: Path | int) -> None:
    """Attach the detached mount `tree` at `target`: a path, or a directory's descriptor (which
    may be an O_PATH one)."""
    if isinstance(target, int):
        flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
        _check(_syscall(SYS_MOVE_MOUNT, tree, b"", target, b"", flags), "move_mount")
        return
    _check(_syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, os.fsencode(target),
                    MOVE_MOUNT_F_EMPTY_PATH), "move_mount", target)  # fmt: skip


def unmount_lazily(target: Path | str) -> None:
    """umount -l TARGET: detached at once, released when nothing uses it any more."""
    _check(_umount2(os.fsencode(target), MNT_DETACH), "umount2", target)


def detach(target: Path) -> None:
    """Detach what attach_idmapped attached at `target`, lazily: an overlay built on it holds a
    private clone of its own, and a plain umount fails (EBUSY) while any copy of the mount that
    propagated elsewhere is in use (the suite saw "cannot unmount the image's idmapped files" once,
    while ten containers were launched side by side)."""
    unmount_lazily(target)
