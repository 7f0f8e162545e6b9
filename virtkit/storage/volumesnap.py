"""The data of pool volumes' snapshots: qcow2 internal snapshots of block volumes, copies of
filesystem volumes.

A block volume (``POOL/block/NAME.qcow2``) keeps its snapshots inside its own file, as an
instance's disks do (vmsnap.py): ``qemu-img snapshot -c/-a/-d``, the disk opened here without
following a symlink and handed to qemu-img as a descriptor with its format named
(``--image-opts driver=qcow2,...``), so nothing is probed and no planted symlink is written
through. Reading the list (``qemu-img info -U``) takes no lock.

A filesystem volume (``POOL/filesystem/NAME/``) is copied whole (snapshots.copy: GNU cp keeping
owners, modes, extended attributes, hard links and holes, reflinked where the filesystem shares
extents) into ``POOL/filesystem/.NAME.snapshots/SNAP/``: beside the volume, never inside it, so
a container the volume is attached to (it sees the volume's directory only) never sees them.
``filesystem/`` is root's alone (0700) and so is the snapshots directory. A copy is made under a
temporary name and renamed into place once whole. Restoring copies the snapshot beside the
volume and swaps the two with one ``renameat2(RENAME_EXCHANGE)`` (two renames where the
filesystem cannot exchange), then removes what the volume held: the volume's name never shows a
half-made tree, and the snapshot stays as it was, to be restored again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
from pathlib import Path

from virtkit.errors import StateError
from virtkit.storage import vmsnap
from virtkit.storage.archive import remove_tree
from virtkit.storage.snapshots import copy, own_dir, sweep
from virtkit.storage.volumes import retire, usage
from virtkit.store.files import temp_name

log = logging.getLogger(__name__)

SUFFIX = ".snapshots"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

__all__ = [
    "SUFFIX", "apply_block", "drop_block", "drop_dir", "has_dir", "home", "restore_dir", "retire_home",
    "tags", "take_block", "take_dir",
]  # fmt: skip


# --- block volumes ------------------------------------------------------------------------------


def tags(disk: Path) -> list[str]:
    """The names of the internal snapshots the qcow2 disk holds (read without its lock)."""
    return vmsnap.tags(disk)


def _snapshot(disk: Path, flag: str, name: str, what: str) -> None:
    vmsnap.qemu_img(disk, ["snapshot", "-q", flag, name, "--image-opts"], what)


def take_block(disk: Path, name: str) -> int:
    """Take internal snapshot `name` of the qcow2 disk; the bytes the disk had allocated then (the
    most the snapshot can keep in use as the disk changes)."""
    _snapshot(disk, "-c", name, f"snapshotting volume {disk.stem}")
    return os.lstat(disk).st_blocks * 512


def apply_block(disk: Path, name: str) -> None:
    """Put the qcow2 disk back to its internal snapshot `name` (its virtual size too)."""
    _snapshot(disk, "-a", name, f"restoring volume {disk.stem} to snapshot {name}")


def drop_block(disk: Path, name: str) -> None:
    """Delete internal snapshot `name` of the disk; one already gone is fine."""
    if disk.is_file() and name in tags(disk):
        _snapshot(disk, "-d", name, f"deleting snapshot {name} of volume {disk.stem}")


# --- filesystem volumes -------------------------------------------------------------------------


def home(volume_dir: Path) -> Path:
    """Where the snapshots of the filesystem volume at `volume_dir` live (not made here)."""
    return volume_dir.with_name(f".{volume_dir.name}{SUFFIX}")


def _open_home(volume_dir: Path) -> tuple[Path, bool]:
    """The volume's snapshots directory, made (root, 0700) if missing; (it, whether made now)."""
    return own_dir(home(volume_dir))


def has_dir(volume_dir: Path, name: str) -> bool:
    """Whether snapshot `name` of the volume is there as a plain directory."""
    try:
        return stat.S_ISDIR(os.lstat(home(volume_dir) / name).st_mode)
    except OSError:
        return False


def take_dir(volume_dir: Path, name: str) -> int:
    """Copy the volume's directory as snapshot `name`; the bytes the copy takes. A failure leaves
    nothing (not even the snapshots directory, if this call made it)."""
    if not stat.S_ISDIR(os.lstat(volume_dir).st_mode):
        raise StateError(f"the volume's directory {volume_dir} is not a directory")
    snaps, made = _open_home(volume_dir)
    try:
        sweep(snaps)
        final = snaps / name
        if os.path.lexists(final):  # it has no record (the caller checked): a killed create's
            log.warning("removing %s, left by an interrupted volume snapshot", final)
            remove_tree(final)
        staged = snaps / temp_name(name)
        try:
            copy(volume_dir, staged, what=f"copying volume {volume_dir.name}")
            os.rename(staged, final)
        except BaseException:
            remove_tree(staged)
            raise
        return usage(final) or 0
    except BaseException:
        if made:
            _rmdir_quietly(snaps)
        raise


def drop_dir(volume_dir: Path, name: str) -> None:
    """Remove snapshot `name` of the volume (renamed out of sight first); one already gone is fine.
    The snapshots directory goes with the last one."""
    snaps = home(volume_dir)
    path = snaps / name
    if os.path.lexists(path):
        hidden = retire(path)
        if hidden is not None:
            remove_tree(hidden)
    _rmdir_quietly(snaps)


def restore_dir(volume_dir: Path, name: str) -> None:
    """Put the volume's directory back to snapshot `name`: a copy of it swapped in by a rename, the
    old tree removed only after. On failure the volume is left as it was."""
    source = home(volume_dir) / name
    if not has_dir(volume_dir, name):
        raise StateError(f"snapshot {name} has lost its data: {source} is missing")
    staged = volume_dir.with_name(temp_name(volume_dir.name))
    try:
        copy(source, staged, what=f"copying snapshot {name} of volume {volume_dir.name}")
        old = _swap(staged, volume_dir)
    except BaseException:
        remove_tree(staged)
        raise
    remove_tree(old)


def _swap(new: Path, target: Path) -> Path:
    """Put `new` at `target`; where what `target` held now is (to be removed)."""
    libc = ctypes.CDLL(None, use_errno=True)
    exchange = getattr(libc, "renameat2", None)
    if exchange is not None:
        if exchange(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE) == 0:
            return new  # `new` now names the old tree
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(target))
    old = target.with_name(temp_name(target.name))
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    return old


def retire_home(volume_dir: Path) -> Path | None:
    """Rename the volume's snapshots directory out of sight (the volume is being deleted); its new
    name, None when it has none. `volumes.restore` puts it back, `volumes.purge` removes it."""
    return retire(home(volume_dir))


def _rmdir_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)
