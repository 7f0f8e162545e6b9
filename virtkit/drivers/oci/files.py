"""Copying one file into a container or out of it, never leaving the container's root filesystem.

A container's root filesystem is the container's to shape: any component of a path in it may be
a symlink to anywhere on the host (``/escape -> /etc``, ``/x -> ../../../root/secret``), swapped
in at any moment. So a container path is never joined to a host path. Every lookup goes through
openat2(2) with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS from a descriptor of the container's
root: the kernel resolves each component, ``..`` and every symlink inside that root, atomically
(virtkit.storage.openat2). The I/O itself is done here, by virtkit, not by a program in the
container (``runc exec cat``): that needs no shell or cat in the image, works on a stopped
container, carries any bytes at full speed, and a running container has no say in what is read
or written beyond the tree it owns.

Which root: a running (or paused) container's is its init's (``/proc/PID/root``), so a path means
what it means inside, its own mounts included (/run is a tmpfs there); the PID is checked after
/proc/PID is opened, which pins the process. A stopped container's root filesystem is mounted
for the duration of the copy (as at its start: rootfs.mount) and unmounted after.

Writing (push): the parent directory is opened inside the root; the data goes to a new temporary
file in it (O_CREAT|O_EXCL|O_NOFOLLOW: never through a symlink, never into an existing inode such
as a device or FIFO), is given its owner (the container's uid and gid mapped to the host's
through the container's linux.uidMappings/gidMappings, when it has a user namespace) and mode,
fsynced, and renamed over the name in the same directory: whoever reads the file sees the old
one or the whole new one. A symlink at that name is replaced, not followed.

Reading (pull): the file is first opened O_PATH (which opens no device), checked to be a regular
file, and only then reopened for reading through our own /proc/self/fd.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from virtkit.drivers.base import ByteSink, ByteSource, InstancePaths
from virtkit.drivers.oci import rootfs
from virtkit.drivers.oci.plan import ContainerFiles
from virtkit.errors import ConflictError, NotFoundError, SpecError, StoreError, VirtkitError
from virtkit.storage.openat2 import openat2

log = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)  # setfsuid, setfsgid: not in the os module

CHUNK = 1 << 20
TEMP_PREFIX = ".virtkit-push."
TEMP_TRIES = 8
LIVE = ("running", "paused", "created")
PATH_FLAGS = os.O_PATH | os.O_CLOEXEC
KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}  # fmt: skip


class StateReader(Protocol):
    """The OCI runtime, as far as files need it: the container's state (status, init PID)."""

    def state(self, cid: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Container:
    """One container as the file functions reach it."""

    name: str
    cid: str
    runtime: StateReader
    paths: InstancePaths

    @property
    def files(self) -> ContainerFiles:
        return ContainerFiles(self.paths)


@contextlib.contextmanager
def _errors(what: str, path: str) -> Iterator[None]:
    """OSErrors of the container's side, told as what was being done to which path."""
    try:
        yield
    except OSError as exc:
        raise _translate(exc, f"{what} {path}") from None


def _translate(exc: OSError, what: str) -> VirtkitError:
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return NotFoundError(f"cannot {what}: no such file or directory")
    if code == errno.ELOOP:
        return SpecError(f"cannot {what}: too many symbolic links, or a /proc magic link, on the way",
                         hint="magic links (/proc/PID/root, /proc/PID/fd/N) are never followed")  # fmt: skip
    if code == errno.EISDIR:
        return ConflictError(f"cannot {what}: it is a directory")
    if code == errno.EBUSY:
        return ConflictError(f"cannot {what}: it is a mount point inside the container")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return VirtkitError(f"cannot {what}: no space left", hint="free some space on the state root's disk")
    return VirtkitError(f"cannot {what}: {exc.strerror or exc}")


def _split(path: str) -> tuple[str, str]:
    """(parent directory, name) of an absolute path, as the container will resolve it."""
    parent, _, base = path.rpartition("/")
    if base in ("", ".", ".."):
        raise SpecError(f"{path} names a directory, not a file")
    return parent or "/", base


# --- the root -----------------------------------------------------------------------------------


def _live_root(container: Container, pid: int) -> int | None:
    """An O_PATH fd of the init's root, or None when the container stopped meanwhile."""
    try:
        proc = os.open(f"/proc/{pid}", PATH_FLAGS | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        # /proc/PID is open: that PID cannot name another process now. Is it still the init?
        again = container.runtime.state(container.cid) or {}
        if again.get("status") not in LIVE or again.get("pid") != pid:
            return None
        return os.open("root", PATH_FLAGS | os.O_DIRECTORY, dir_fd=proc)
    except (FileNotFoundError, ProcessLookupError):
        return None
    finally:
        os.close(proc)


@contextlib.contextmanager
def container_root(container: Container) -> Iterator[tuple[int, bool]]:
    """An O_PATH fd of the container's root directory, and whether the container is live.

    A stopped container's root filesystem is mounted for the duration (unless it still is, as
    after its init died on its own) and unmounted after."""
    for _attempt in range(3):
        state = container.runtime.state(container.cid) or {}
        if state.get("status") not in LIVE or not state.get("pid"):
            break
        fd = _live_root(container, int(state["pid"]))
        if fd is not None:
            try:
                yield fd, True
            finally:
                os.close(fd)
            return
    files = container.files
    mounted_here = not rootfs.mounted(files.merged)
    if mounted_here:
        lower = Path(str(_saved_runtime(container.paths).get("lower", "")))
        rootfs.mount(rootfs.Layers(lower, files.upper, files.work, files.merged))
        log.debug("%s: root filesystem mounted for a file copy", container.name)
    try:
        fd = os.open(files.merged, PATH_FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            yield fd, False
        finally:
            os.close(fd)
    finally:
        if mounted_here:
            rootfs.unmount(files.merged)


def _saved_runtime(paths: InstancePaths) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads(paths.runtime.read_text())["config"]
        return config
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"cannot read the saved runtime of the container ({paths.runtime}): {exc}") from exc


# --- ids ----------------------------------------------------------------------------------------


def _linux_config(container: Container, live: bool) -> dict[str, Any]:
    """The `linux` object of the container's config.json: the one it runs with when live."""
    if live:
        with contextlib.suppress(OSError, ValueError):
            linux = json.loads(container.files.config.read_text()).get("linux")
            if isinstance(linux, dict):
                return linux
    linux = _saved_runtime(container.paths).get("bundle", {}).get("linux", {})
    return linux if isinstance(linux, dict) else {}


def map_id(mappings: object, value: int, what: str, name: str) -> int:
    """The host id of the container's id `value` under OCI `mappings` (none: the same id)."""
    if not mappings:
        return value
    ranges = []
    for entry in mappings if isinstance(mappings, list) else []:
        start, host, size = int(entry["containerID"]), int(entry["hostID"]), int(entry["size"])
        if start <= value < start + size:
            return host + value - start
        ranges.append(f"{start}-{start + size - 1}")
    raise SpecError(f"{what} {value} does not exist in {name}'s user namespace",
                    hint=f"its {what}s are {', '.join(ranges) or 'none'}")  # fmt: skip


def host_ids(container: Container, live: bool, uid: int, gid: int) -> tuple[int, int]:
    linux = _linux_config(container, live)
    return (map_id(linux.get("uidMappings"), uid, "uid", container.name),
            map_id(linux.get("gidMappings"), gid, "gid", container.name))  # fmt: skip


# --- push ---------------------------------------------------------------------------------------


def push(container: Container, path: str, source: ByteSource, *, uid: int, gid: int, mode: int) -> int:
    """Write `source` at `path` inside the container (see the module's docstring); bytes written."""
    parent, base = _split(path)
    where = f"{path} in {container.name}"
    with container_root(container) as (root, live):
        owner = host_ids(container, live, uid, gid)
        creator = host_ids(container, live, 0, 0)
        with _errors("open the directory of", where):
            directory = openat2(root, parent, PATH_FLAGS | os.O_DIRECTORY)
        try:
            _refuse_directory(directory, base, where)
            return _write_new(directory, base, source, (owner, creator), mode, where)
        finally:
            os.close(directory)


def _refuse_directory(directory: int, base: str, where: str) -> None:
    try:
        info = os.stat(base, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _translate(exc, f"look at {where}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConflictError(f"{where} is a directory: a file cannot replace it",
                            hint="name a file inside it, e.g. DIR/NAME")  # fmt: skip


@contextlib.contextmanager
def _acting_as(ids: tuple[int, int] | None) -> Iterator[None]:
    """With `ids`, this thread's filesystem uid and gid are those (setfsuid(2)) for the block.

    A filesystem mounted inside the container's user namespace (the /run tmpfs of a container
    with one) refuses to create a name for host root, whose ids it cannot map (EOVERFLOW); made
    as the container's root, the entry is what its own root would make. The capabilities that
    bypass permissions are the fs uid's too: the container's root's rights apply there."""
    if ids is None:
        yield
        return
    gid = _libc.setfsgid(ids[1])  # each returns the previous id
    uid = _libc.setfsuid(ids[0])
    try:
        yield
    finally:
        _libc.setfsuid(uid)
        _libc.setfsgid(gid)


def _create_temp(
    directory: int, where: str, creator: tuple[int, int]
) -> tuple[int, str, tuple[int, int] | None]:
    """A new temporary file beside `where`: its fd, its name, and the fs ids it was made with."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    acting: tuple[int, int] | None = None
    for _attempt in range(TEMP_TRIES):
        name = TEMP_PREFIX + secrets.token_hex(6)
        try:
            with _acting_as(acting):
                return os.open(name, flags, 0o600, dir_fd=directory), name, acting
        except FileExistsError:
            continue  # someone inside made that name: take another
        except OSError as exc:
            if exc.errno == errno.EOVERFLOW and acting is None and creator != (0, 0):
                acting = creator
                continue
            raise _translate(exc, f"create a file beside {where}") from None
    raise ConflictError(f"cannot create a temporary file beside {where}: every name tried was taken")


def _write_new(
    directory: int, base: str, source: ByteSource, ids: tuple[tuple[int, int], tuple[int, int]],
    mode: int, where: str,
) -> int:  # fmt: skip
    """Write a new file beside `base`, then rename it over `base`. `ids`: its owner on the host,
    and the host ids of the container's root."""
    owner, creator = ids
    fd, temp, acting = _create_temp(directory, where, creator)
    written = 0
    try:
        while chunk := source.read(CHUNK):
            with _errors("write", where):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            written += len(chunk)
        with _errors("set the owner and mode of", where):
            os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # after chown, which clears setuid and setgid bits
            os.fsync(fd)
        os.close(fd)
        fd = -1
        with _errors("replace", where), _acting_as(acting):
            os.rename(temp, base, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=directory)
        raise
    return written


# --- pull ---------------------------------------------------------------------------------------


def pull(container: Container, path: str, sink: ByteSink) -> int:
    """Copy the regular file at `path` inside the container to `sink`; bytes copied."""
    where = f"{path} in {container.name}"
    with container_root(container) as (root, _live):
        with _errors("read", where):
            handle = openat2(root, path, PATH_FLAGS)
        try:
            kind = stat.S_IFMT(os.fstat(handle).st_mode)
            if kind != stat.S_IFREG:
                raise SpecError(f"{where} is {KINDS.get(kind, 'not a regular file')}: only regular files "
                                "can be pulled", hint=_hint(kind, path, container.name))  # fmt: skip
            with _errors("read", where):
                fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
        finally:
            os.close(handle)
        try:
            return _copy_out(fd, sink, where)
        finally:
            os.close(fd)


def _hint(kind: int, path: str, name: str) -> str | None:
    if kind == stat.S_IFDIR:
        return f"pull its files one by one, or an archive of it: virtkit exec {name} -- tar -cf - -C {path} ."
    return None


def _copy_out(fd: int, sink: ByteSink, where: str) -> int:
    copied = 0
    while True:
        with _errors("read", where):
            chunk = os.read(fd, CHUNK)
        if not chunk:
            return copied
        sink.write(chunk)
        copied += len(chunk)
