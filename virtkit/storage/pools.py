"""The directory of a `dir` storage pool: which paths may hold one, and making and removing it.

A pool directory holds a marker file (`.virtkit-pool`, naming the pool and its state root) and one
directory per volume type::

    POOL/
      .virtkit-pool         {"pool": NAME, "root": ROOT}: says whose it is; missing = not mounted?
      block/NAME.qcow2      block volumes (VM disks)
      filesystem/NAME/      filesystem volumes (container directories); filesystem/ is root's alone

A pool path is refused unless it is absolute and plain (no `.`/`..`, no symlink anywhere on it), an
empty directory or a new one in an existing directory, outside /proc, /sys and /dev, not holding or
inside the state root (except under ROOT/pools/), not holding or inside another pool — of this root
(`others`) or of another one (an ancestor with a marker or a state database). Everything is made
relative to a descriptor of the pool directory opened with O_NOFOLLOW and checked to be the path
asked for, so a symlink swapped in after the checks is not followed. Only a directory virtkit made
itself is ever removed, and only when empty.

`filesystem/` is mode 0700: a container's root writes files owned by uid 0 into a volume it has
(idmapped: see drivers/oci/mounts.py), setuid ones too, which no other host user may reach.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from virtkit.errors import SpecError, StateError, StoreError

MARKER = ".virtkit-pool"
POOLS_DIR = "pools"
SUBDIRS = ("block", "filesystem")
POOL_MODE = 0o711  # QEMU's unprivileged user must traverse it to reach a volume it is given
# Directories' modes: block/ for QEMU's user to traverse; filesystem/ for root only (see above).
SUBDIR_MODES = {"block": 0o711, "filesystem": 0o700}
MAX_PATH = 1024
# What an empty filesystem holds: a pool may be the mount point of a freshly made one.
_EMPTY_OK = frozenset({"lost+found"})
_PSEUDO = ("/proc", "/sys", "/dev")
_DB_NAME = "virtkit.db"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Capacity:
    total: int
    free: int


def normal_path(text: str) -> str:
    """A pool path as typed, checked for form only and normalised (repeated and trailing '/' gone)."""
    if not text:
        raise SpecError("invalid pool path: it is empty", hint="give an absolute path, e.g. /srv/virtkit")
    if not text.isprintable():
        raise SpecError(f"invalid pool path {text!r}: it holds control characters")
    if len(text) > MAX_PATH:
        raise SpecError(f"invalid pool path: longer than {MAX_PATH} characters")
    if not text.startswith("/"):
        raise SpecError(
            f"invalid pool path {text!r}: it must be absolute",
            hint=f"e.g. {os.path.join(os.getcwd(), text)!r}",
        )
    parts = [part for part in text.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise SpecError(
            f"invalid pool path {text!r}: it must not hold '.' or '..'", hint="give the plain path"
        )
    if not parts:
        raise SpecError(
            "a pool cannot be the whole filesystem (/)", hint="give a directory, e.g. /srv/virtkit"
        )
    return "/" + "/".join(parts)


def within(path: str, parent: str) -> bool:
    """Whether `path` is `parent` or below it (both normal absolute paths)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def check_path(path: str, *, root: str, others: Mapping[str, str]) -> bool:
    """Refuse `path` (normal, see `normal_path`) as a new pool's directory; whether it exists.

    `root` is the state root's real path, `others` the paths of this root's pools by name.
    """
    _check_no_symlink(path)
    if any(within(path, pseudo) for pseudo in _PSEUDO):
        raise SpecError(f"pool path {path} is in a kernel pseudo-filesystem", hint="choose a real disk")
    _check_state_root(path, root)
    for name, other in sorted(others.items()):
        if within(path, other):
            raise SpecError(f"pool path {path} is inside pool {name!r} ({other})", hint="pools cannot nest")
        if within(other, path):
            raise SpecError(f"pool path {path} would hold pool {name!r} ({other})", hint="pools cannot nest")
    _check_foreign(path, root)
    return _check_directory(path)


def _check_no_symlink(path: str) -> None:
    prefix = ""
    for part in path.strip("/").split("/"):
        prefix += "/" + part
        if os.path.islink(prefix):
            raise SpecError(
                f"pool path {path} goes through a symlink: {prefix} -> {os.readlink(prefix)}",
                hint=f"a pool is named by its real path (this one leads to {os.path.realpath(path)})",
            )
        if not os.path.lexists(prefix):
            return


def _check_state_root(path: str, root: str) -> None:
    if within(root, path):
        raise SpecError(f"pool path {path} would hold the state root {root}", hint="choose another directory")
    pools = os.path.join(root, POOLS_DIR)
    if within(path, root) and not (within(path, pools) and path != pools):
        raise SpecError(
            f"pool path {path} is among the state root's own directories",
            hint=f"inside the state root only {pools}/NAME may hold a pool; or choose a path outside {root}",
        )


def _check_foreign(path: str, root: str) -> None:
    """An ancestor holding a pool marker or a state database belongs to another virtkit."""
    directory = os.path.dirname(path)
    while True:
        if os.path.lexists(os.path.join(directory, MARKER)):
            raise SpecError(f"pool path {path} is inside another virtkit pool's directory {directory}")
        if directory != root and os.path.lexists(os.path.join(directory, _DB_NAME)):
            raise SpecError(f"pool path {path} is inside another virtkit state root {directory}")
        if directory == "/":
            return
        directory = os.path.dirname(directory)


def _check_directory(path: str) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            reason = "does not exist" if not os.path.lexists(parent) else "is not a directory"
            raise SpecError(
                f"pool path {path} cannot be created: {parent} {reason}", hint=f"create {parent} first"
            ) from None
        return False
    except OSError as exc:
        raise SpecError(f"pool path {path} cannot be used: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(mode):
        raise SpecError(f"pool path {path} is not a directory", hint="give a directory, or a new path")
    try:
        names = set(os.listdir(path)) - _EMPTY_OK
    except OSError as exc:
        raise SpecError(f"pool path {path} cannot be read: {exc.strerror or exc}") from exc
    if MARKER in names:
        raise SpecError(f"{path} is already the directory of a virtkit pool (of another state root?)")
    if names:
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise SpecError(
            f"pool path {path} is not empty (it holds {shown})",
            hint="a pool takes an empty or a new directory: virtkit never mixes its volumes with other files",
        )
    return True


@contextlib.contextmanager
def opened(path: str) -> Iterator[int]:
    """A descriptor of directory `path`, proven to be that very path (no symlink swapped in)."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateError(
                f"{path} is no longer a plain directory (a symlink or a file took its place)"
            ) from exc
        raise StoreError(f"cannot open pool directory {path}: {exc.strerror or exc}") from exc
    try:
        if os.readlink(f"/proc/self/fd/{fd}") != path:
            raise StateError(f"{path} is reached through a symlink: refusing to write there")
        yield fd
    finally:
        os.close(fd)


def make(path: str, *, exists: bool, pool: str, root: str) -> None:
    """Make `path` a pool directory: the directory (when new), its marker and type directories.

    A failure removes whatever this call made and raises StoreError saying why.
    """
    made: list[str] = []
    try:
        if not exists:
            os.mkdir(path, POOL_MODE)
            made.append(path)
        with opened(path) as fd:
            if not exists:
                os.fchmod(fd, POOL_MODE)  # mkdir's mode went through the umask
            for sub in SUBDIRS:
                os.mkdir(sub, SUBDIR_MODES[sub], dir_fd=fd)
                os.chmod(sub, SUBDIR_MODES[sub], dir_fd=fd)  # mkdir's mode went through the umask
                made.append(os.path.join(path, sub))
            marker = json.dumps({"pool": pool, "root": root}) + "\n"
            mfd = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o644, dir_fd=fd)  # fmt: skip
            made.append(os.path.join(path, MARKER))
            try:
                os.write(mfd, marker.encode())
                os.fsync(mfd)
            finally:
                os.close(mfd)
            os.fsync(fd)
    except BaseException as exc:
        _unmake(made)
        if isinstance(exc, OSError):
            raise StoreError(f"cannot make pool directory {path}: {exc.strerror or exc}") from exc
        raise


def _unmake(made: list[str]) -> None:
    for item in reversed(made):
        with contextlib.suppress(OSError):
            if item.endswith(MARKER):
                os.unlink(item)
            else:
                os.rmdir(item)


def read_marker(path: str) -> dict[str, str] | None:
    """What the pool marker in `path` says, or None when there is none (or it is not one)."""
    try:
        fd = os.open(os.path.join(path, MARKER), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = json.loads(os.read(fd, 4096))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def check_healthy(path: str, pool: str) -> None:
    """Refuse to use pool `pool` at `path` unless its directory is there and marked as that pool:
    a pool on an unmounted filesystem must not fill the disk beneath its mount point."""
    marker = read_marker(path)
    if marker is None or marker.get("pool") != pool:
        found = "is missing" if not os.path.isdir(path) else "has no pool marker"
        raise StateError(
            f"pool {pool!r}: its directory {path} {found}",
            hint="is the filesystem holding it mounted? virtkit will not write into another directory",
        )
    with opened(path) as fd:
        for sub in SUBDIRS:
            try:
                mode = os.stat(sub, dir_fd=fd, follow_symlinks=False).st_mode
            except OSError:
                mode = 0
            if not stat.S_ISDIR(mode):
                raise StateError(
                    f"pool {pool!r}: {os.path.join(path, sub)} is missing or not a plain directory",
                    hint="virtkit writes volumes only into the pool's own directories: make it one again",
                )


def seal_filesystem(path: str) -> None:
    """Make the pool's filesystem/ directory root's alone again (pools made before it was)."""
    with opened(path) as fd:
        try:
            sub = os.open("filesystem", _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise StateError(f"{os.path.join(path, 'filesystem')} is not a plain directory") from exc
        try:
            info = os.fstat(sub)
            if stat.S_IMODE(info.st_mode) & 0o077 or info.st_uid != 0:
                os.fchown(sub, 0, 0)
                os.fchmod(sub, SUBDIR_MODES["filesystem"])
        finally:
            os.close(sub)


def remove(path: str, *, owned: bool, pool: str) -> list[str]:
    """Take the layout of pool `pool` out of `path` (the directory itself too when virtkit made it
    and it is empty); what was kept, and why, for the user to hear."""
    kept: list[str] = []
    if not os.path.isdir(path) or os.path.islink(path):
        return [f"{path} was already gone"]
    marker = read_marker(path)
    if marker is not None and marker.get("pool") != pool:
        return [f"{path} is marked as pool {marker.get('pool')!r} now: left as it is"]
    with opened(path) as fd:
        for sub in SUBDIRS:
            try:
                os.rmdir(sub, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError:
                kept.append(f"{os.path.join(path, sub)} holds files virtkit did not make: kept")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(MARKER, dir_fd=fd)
    if owned:
        try:
            os.rmdir(path)
        except OSError:
            kept.append(f"{path} is not empty: kept")
    return kept


def capacity(path: str) -> Capacity | None:
    """Size and free space (for unprivileged writers, as df shows) of the filesystem holding `path`."""
    try:
        vfs = os.statvfs(path)
    except OSError:
        return None
    return Capacity(total=vfs.f_blocks * vfs.f_frsize, free=vfs.f_bavail * vfs.f_frsize)
