"""Container layers: freezing an upper directory into a shared layer, moving a tree's owners from
one container's id range to another's, and copying a stack of layers into one whole tree.

A container's upper/ is owned by its own host id range (uid BASE+N for its uid N). A shared
layer must show right in any container, so a frozen layer is moved back to the container's own
ids (0-based, as an image's tree is) and every container attaches it idmapped into its range, as
it does the image. The walk touches each entry of upper/ once (what the container changed, not
the image's size). chown(2) clears setuid/setgid bits and file capabilities: both are put back,
a capability's root id (v3, namespaced) moved with the owners.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from virtkit.drivers.oci import idmount
from virtkit.drivers.oci.rootfs import Shift
from virtkit.errors import StateError, ToolError
from virtkit.storage.archive import remove_tree
from virtkit.storage.snapshots import copy

log = logging.getLogger(__name__)

CAPABILITY = "security.capability"
_V2, _V3 = 0x02000000, 0x03000000
_REVISION = 0xFF000000

__all__ = ["freeze_tree", "merged_copy", "move_ids", "thaw_tree"]


def _moved(value: int, src: int, dst: int, size: int) -> int:
    return value - src + dst if src <= value < src + size else value


def _capability(data: bytes, uid: tuple[int, int, int]) -> bytes:
    """A file capability with its v3 root id moved (to a plain v2 one when that root is host root)."""
    if len(data) < 24 or int.from_bytes(data[:4], "little") & _REVISION != _V3:
        return data
    root = _moved(int.from_bytes(data[20:24], "little"), *uid)
    magic = int.from_bytes(data[:4], "little")
    if root == 0:
        return ((magic & ~_REVISION) | _V2).to_bytes(4, "little") + data[4:20]
    return data[:20] + root.to_bytes(4, "little")


def move_ids(tree: Path, src: Shift | None, dst: Shift | None) -> int:
    """Move the owners of every entry of `tree` from range `src` to range `dst` (None: the
    container's own 0-based ids); ids outside `src` stay. How many entries changed."""
    src_uid, src_gid = (src.uid, src.gid) if src else (0, 0)
    dst_uid, dst_gid = (dst.uid, dst.gid) if dst else (0, 0)
    either = src or dst
    size = either.size if either is not None else 0
    if not size or (src_uid, src_gid) == (dst_uid, dst_gid):
        return 0
    uids, gids = (src_uid, dst_uid, size), (src_gid, dst_gid, size)
    changed = 0
    seen: set[tuple[int, int]] = set()  # a hard link's inode once

    for path in _entries(tree):
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        uid, gid = _moved(info.st_uid, *uids), _moved(info.st_gid, *gids)
        if (uid, gid) == (info.st_uid, info.st_gid):
            continue
        link = stat.S_ISLNK(info.st_mode)
        cap = None
        if stat.S_ISREG(info.st_mode):
            with contextlib.suppress(OSError):
                cap = os.getxattr(path, CAPABILITY, follow_symlinks=False)
        os.lchown(path, uid, gid)
        if not link and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(info.st_mode))
        if cap is not None:
            os.setxattr(path, CAPABILITY, _capability(cap, uids), follow_symlinks=False)
        changed += 1
    return changed


def _entries(tree: Path) -> Iterator[str]:
    """`tree` and everything under it, no symlink followed."""

    def fail(exc: OSError) -> None:
        raise exc

    yield str(tree)
    for directory, dirs, files in os.walk(tree, onerror=fail):
        for name in (*dirs, *files):
            yield os.path.join(directory, name)


def freeze_tree(upper: Path, layer: Path, shift: Shift | None) -> None:
    """Move the stopped container's upper/ to `layer` (a rename, same filesystem) and give it the
    container's own ids. On failure it is put back as it was."""
    if upper.is_symlink() or not upper.is_dir():
        raise StateError(f"the container has no writable layer at {upper}")
    os.rename(upper, layer)
    try:
        move_ids(layer, shift, None)
    except BaseException:
        thaw_tree(layer, upper, shift)
        raise


def thaw_tree(layer: Path, upper: Path, shift: Shift | None) -> None:
    """Undo `freeze_tree`."""
    move_ids(layer, None, shift)
    os.rename(layer, upper)


def merged_copy(lowers: list[Path], dest: Path, *, metacopy: bool = False) -> None:
    """Copy the tree that `lowers` (overlayfs layers, nearest first, the last a whole tree) make
    together to the new directory `dest`: what a container on them sees, as one standalone tree.
    The kernel merges them (a read-only overlay mount, nothing written), `cp` keeps everything."""
    if not lowers:
        raise StateError("nothing to copy: no layers")
    if len(lowers) == 1:
        copy(lowers[0], dest, what="copying the root filesystem")
        return
    for path in lowers:
        if any(char in str(path) for char in ",:\n"):
            raise StateError(f"path {path} holds a character overlayfs options cannot carry (, : or newline)")
    with tempfile.TemporaryDirectory(prefix=".merge-", dir=dest.parent) as scratch:
        point = Path(scratch) / "merged"
        point.mkdir()
        options = "lowerdir=" + ":".join(str(path) for path in lowers) + (",metacopy=on" if metacopy else "")
        try:
            idmount.mount_overlay(options, point)
        except OSError as exc:
            raise ToolError(f"mounting the layers to copy them failed: {exc.strerror}") from exc
        try:
            copy(point, dest, what="copying the root filesystem")
        except BaseException:
            remove_tree(dest)
            raise
        finally:
            idmount.unmount(point)
