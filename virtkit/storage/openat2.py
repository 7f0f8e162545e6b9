"""openat2(2) with RESOLVE_IN_ROOT: opening a path inside a tree the kernel keeps us in.

A container's root filesystem is the container's to shape: any component of a path in it may be
a symlink to anywhere (``/escape -> /etc``, ``/x -> ../../../../root``). Walked with plain host
path joins, such a path leads out of the tree. With RESOLVE_IN_ROOT the kernel resolves every
component (``..``, absolute and relative symlinks alike) as if `root_fd` were ``/``, atomically,
with no window for a rename to exploit; RESOLVE_NO_MAGICLINKS also refuses /proc magic links
(``/proc/self/root``, ``/proc/PID/fd/N``), which would jump out of any root.

Python has no binding for openat2 (Linux 5.6+): it is called through ctypes by its syscall
number, the same on every architecture since Linux 5.1 unified the numbers of new syscalls.
"""

from __future__ import annotations

import ctypes
import errno
import os

from virtkit.errors import HostCapabilityError

SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
# The kernel answers EAGAIN when a rename or mount raced a ".." walk under RESOLVE_IN_ROOT.
RETRIES = 16


class OpenHow(ctypes.Structure):
    """struct open_how (linux/openat2.h)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = IN_ROOT) -> int:
    """An fd of `path` opened relative to `dir_fd` with `resolve` rules; OSError as os.open raises.

    With the default rules `path` (absolute or not) is resolved inside `dir_fd` as its root.
    HostCapabilityError on a kernel without openat2 (before Linux 5.6).
    """
    how = OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    encoded = os.fsencode(path)
    for _attempt in range(RETRIES):
        fd = _syscall(SYS_OPENAT2, ctypes.c_int(dir_fd), ctypes.c_char_p(encoded), ctypes.byref(how),
                      ctypes.c_size_t(ctypes.sizeof(how)))  # fmt: skip
        if fd >= 0:
            return int(fd)
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            raise HostCapabilityError(
                "this kernel has no openat2(2), which virtkit needs to reach files inside a "
                "container safely", hint="run Linux 5.6 or later",
            )
        if code not in (errno.EAGAIN, errno.EINTR):
            raise OSError(code, os.strerror(code), path)
    raise OSError(errno.EAGAIN, "the path kept changing while it was resolved", path)
