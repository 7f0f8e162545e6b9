"""Mounting a volume into a running container, and taking it out again, from inside its mount namespace.

The volume's clone (mounts.clone: idmapped, nodev) is made on the host, then a forked child joins
the container's mount namespace (setns: its root and working directory become the container's
root) and moves the clone onto the destination there (move_mount takes a detached mount into
the namespace its caller is in). The destination is resolved by the kernel inside the container's
root with no symlink followed (openat2 RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS): the container's
root shapes its own tree, and a planted symlink must not move the mount anywhere else. Missing
directories are made one at a time, owned by the container's root as runc would make them.

Detaching resolves the destination the same way, checks that what is there is the volume's own
directory (same device and inode as on the host), and unmounts it lazily (MNT_DETACH): processes
inside that still use it keep it until they let go, and nothing of the volume's data is touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
from collections.abc import Callable

from virtkit.drivers.oci import idmount
from virtkit.drivers.oci.rootfs import Shift
from virtkit.errors import SpecError, StateError, VirtkitError
from virtkit.storage.openat2 import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, openat2

CLONE_NEWNS = 0x00020000
CHILD_TIMEOUT = 10.0
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_STEPS = ("joining its mount namespace", "reaching", "making", "mounting on", "unmounting")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)


class _Failed(Exception):
    """Raised in the child: which step failed, with the errno."""

    def __init__(self, step: int, code: int) -> None:
        super().__init__(step, code)
        self.step, self.code = step, code


def attach(pid: int, tree: int, destination: str, shift: Shift | None) -> None:
    """Move the detached mount `tree` onto `destination` in the mount namespace of process `pid`."""
    owner = (shift.uid, shift.gid) if shift is not None else (0, 0)

    def act() -> None:
        target = _directory(destination, owner)
        try:
            _step(3, lambda: idmount.move_tree(tree, target))
        finally:
            os.close(target)

    _in_namespace(pid, act, destination)


def detach(pid: int, destination: str, source: str) -> None:
    """Unmount, lazily, the volume whose host directory is `source` from `destination` in the mount
    namespace of `pid`; StateError when something else (or nothing) is mounted there."""
    seen = os.stat(source, follow_symlinks=False)

    def act() -> None:
        target = _step(1, lambda: openat2(_root(), destination, _PATH_FLAGS, resolve=_RESOLVE))
        try:
            found = os.fstat(target)
            if (found.st_dev, found.st_ino) != (seen.st_dev, seen.st_ino):
                raise _Failed(4, errno.ESTALE)
            os.fchdir(target)  # umount2 takes a path: "." is the volume's root, reached without a name
            _step(4, lambda: idmount.unmount_lazily("."))
        finally:
            os.close(target)

    _in_namespace(pid, act, destination)


def _root() -> int:
    return os.open("/", _PATH_FLAGS)


def _step(step: int, call: Callable[[], object]) -> int:
    try:
        result = call()
    except OSError as exc:
        raise _Failed(step, exc.errno or errno.EIO) from exc
    return result if isinstance(result, int) else 0


def _directory(destination: str, owner: tuple[int, int]) -> int:
    """An O_PATH descriptor of `destination` inside the current root, made (as runc makes a missing
    mount point, owned by the container's root) where missing; no symlink followed on the way."""
    current = _root()
    try:
        for part in destination.strip("/").split("/"):
            step = _open_or_make(current, part, owner)
            os.close(current)
            current = step
    except BaseException:
        os.close(current)
        raise
    return current


def _open_or_make(parent: int, name: str, owner: tuple[int, int]) -> int:
    for _attempt in range(2):
        try:
            return openat2(parent, name, _PATH_FLAGS, resolve=_RESOLVE)
        except FileNotFoundError:
            _make(parent, name, owner)
        except OSError as exc:
            raise _Failed(1, exc.errno or errno.EIO) from exc
    raise _Failed(1, errno.ENOENT)


def _make(parent: int, name: str, owner: tuple[int, int]) -> None:
    try:
        os.mkdir(name, 0o755, dir_fd=parent)
    except FileExistsError:
        return  # made meanwhile: opened (and checked) by the caller
    except OSError as exc:
        raise _Failed(2, exc.errno or errno.EIO) from exc
    _step(2, lambda: os.chown(name, *owner, dir_fd=parent, follow_symlinks=False))


def _in_namespace(pid: int, act: Callable[[], None], destination: str) -> None:
    """Run `act` in a forked child that joined the mount namespace of `pid`; its failure raised here."""
    try:
        ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"the container's process {pid} is gone ({exc.strerror})") from exc
    read, write = os.pipe()
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe, then _exit
            _child(ns, act, write)
        os.close(write)
        write = -1
        answer = _read_within(read, CHILD_TIMEOUT)
        if not answer:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    finally:
        for fd in (ns, read, write):
            if fd >= 0:
                os.close(fd)
    _raise(answer, destination)


def _child(ns: int, act: Callable[[], None], write: int) -> None:
    code = b"ok"
    try:
        if _libc.setns(ns, CLONE_NEWNS) != 0:
            raise _Failed(0, ctypes.get_errno())
        act()
    except _Failed as failed:
        code = f"{failed.step}:{failed.code}".encode()
    except BaseException:
        code = b"5:0"
    finally:
        with contextlib.suppress(OSError):
            os.write(write, code)
        os._exit(0)


def _read_within(fd: int, timeout: float) -> bytes:
    ready, _w, _x = select.select([fd], [], [], timeout)
    return os.read(fd, 64) if ready else b""


def _raise(answer: bytes, destination: str) -> None:
    if answer == b"ok":
        return
    if not answer:
        raise VirtkitError(
            f"mounting at {destination} in the container did not finish in {CHILD_TIMEOUT:g} s"
        )
    step_text, _, code_text = answer.decode().partition(":")
    step, code = int(step_text), int(code_text)
    if step == 4 and code == errno.ESTALE:
        raise StateError(f"{destination} in the container is not the volume's mount (did it move?)")
    if step == 5:
        raise VirtkitError(f"mounting at {destination} in the container failed unexpectedly")
    why = os.strerror(code)
    if step in (1, 2) and code in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
        raise SpecError(
            f"{destination} in the container goes through a symlink or a file ({why})",
            hint="choose a path made of plain directories (or none yet) inside the container",
        )
    raise VirtkitError(f"{_STEPS[step]} {destination} in the container failed: {why}")
