"""The file-level difference of a container's writable layer since one of its snapshots (what an
incremental export of a container carries: `virtkit export NAME FILE --since SNAP`), and its
application onto a copy of that snapshot's layer on import.

`diff` walks both trees as a backup walks a layer (storage/backuptree.py: ids as the container's
own, the extended attributes a backup keeps, overlayfs whiteouts and opaque markers included) and
compares each entry's type, size, mtime (ns), mode, owner, symlink target, extended attributes and
hard-link group: content is not read, a change of metadata is the change. It keeps every new or
changed entry, every other name of a kept entry's inode (a hard link stays one inode), every
directory above them (each carried directory is an entry with its own metadata), and the root; and
it lists the topmost paths of the snapshot that are gone (`DELETED`: NUL-terminated paths).

`apply` turns a fresh copy of the snapshot's layer into the present: the deletions first, then the
carried entries, parents first: a directory's owner, mode and attributes set in place (or made,
replacing what was there), anything else renamed in from the checked staging tree, replacing what
was there (a directory included). Every directory it touched gets its times last (the carried
one's, or those it had). Paths are reached only through FdTree (no symlink is ever followed),
and a deletion must name an entry the copy holds: else the archive belongs to another state.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import RejectedError
from virtkit.storage.backuptree import UPPER_XATTRS, Entry, IdRange, Walk, walk
from virtkit.storage.fdtree import DIR_FLAGS, FdTree
from virtkit.units import MiB

DELETED = "upper.deleted"  # the file part of an incremental archive listing the deleted paths
MAX_DELETED_BYTES = 64 * MiB  # a million deleted paths of 60 bytes: far beyond a real change
MAX_PATH = 4096
_NAME_MAX = 255

Signature = tuple[object, ...]


@dataclass(frozen=True)
class Diff:
    """What changed from a snapshot's layer to the present one: the present's entries to carry (in
    walk order, parents first, the root first), the snapshot's topmost paths that are gone, and how
    many entries were new or changed themselves (without the directories above them)."""

    entries: list[Entry]
    deleted: list[str]
    changed: int


def diff(base: Path, present: Path, *, ids: IdRange | None = None, lower: Path | None = None,
         report: Walk | None = None) -> Diff:  # fmt: skip
    """The difference from the layer at `base` to the layer at `present` (both walked with the
    container's `ids` and the image tree `lower`, as a full export walks them)."""
    _, before = _index(base, ids, lower, Walk())
    entries, now = _index(present, ids, lower, report or Walk())
    changed = {name for name, signature in now.items() if before.get(name) != signature}
    own = len(changed)
    for name in list(changed):
        # every name of its inode: the archive needs them together (their signatures differ too)
        changed.update(_group(now[name]))
    kept = {"."}
    for name in changed:
        while name not in kept:
            kept.add(name)
            name = name.rpartition("/")[0] or "."
    gone = set(before) - set(now)
    deleted = [name for name in before if name in gone and (name.rpartition("/")[0] or ".") not in gone]
    return Diff([entry for entry in entries if entry.info.name in kept], deleted, own)


def _group(signature: Signature) -> tuple[str, ...]:
    names = signature[-1]
    assert isinstance(names, tuple)
    return names


def _index(top: Path, ids: IdRange | None, lower: Path | None, report: Walk
           ) -> tuple[list[Entry], dict[str, Signature]]:  # fmt: skip
    """The entries of the layer at `top` and each one's signature (what `diff` compares)."""
    entries = list(walk(top, ids=ids, lower=lower, allowed=UPPER_XATTRS, report=report))
    groups: dict[str, list[str]] = {}
    for entry in entries:
        if entry.info.type == tarfile.LNKTYPE:
            groups.setdefault(entry.info.linkname, [entry.info.linkname]).append(entry.info.name)
    named = {entry.info.name: entry.info for entry in entries}
    signatures: dict[str, Signature] = {}
    for entry in entries:
        name = entry.info.name
        head = named[entry.info.linkname] if entry.info.type == tarfile.LNKTYPE else entry.info
        mtime = os.lstat(top if name == "." else top / name).st_mtime_ns
        link = head.linkname if head.type == tarfile.SYMTYPE else ""
        signatures[name] = (head.type, head.size, mtime, head.mode, head.uid, head.gid, link,
                            (head.devmajor, head.devminor), tuple(sorted(head.pax_headers.items())),
                            tuple(groups.get(head.name, ())))  # fmt: skip
    return entries, signatures


# --- the list of deleted paths ----------------------------------------------------------------------


def encode_deleted(paths: list[str]) -> bytes:
    return b"".join(os.fsencode(path) + b"\0" for path in paths)


def parse_deleted(data: bytes, label: str) -> list[str]:
    """The deleted paths listed in `data`, each checked: relative, inside the layer, not its root."""
    if data and not data.endswith(b"\0"):
        raise _refused(label, "its list of deleted paths is cut short")
    paths: list[str] = []
    for raw in data.split(b"\0")[:-1]:
        path = os.fsdecode(raw)
        parts = path.split("/")
        if not path:
            why = "an empty path"
        elif path.startswith("/"):
            why = "an absolute path"
        elif ".." in parts:
            why = "a path that climbs out of the container's layer with '..'"
        elif "" in parts or "." in parts:
            why = "a path that is not in its plain form"
        elif len(raw) > MAX_PATH or any(len(os.fsencode(part)) > _NAME_MAX for part in parts):
            why = "a path too long"
        else:
            paths.append(path)
            continue
        raise _refused(label, f"it would delete {path!r}, {why}")
    return paths


def _refused(label: str, why: str) -> RejectedError:
    return RejectedError(f"archive {label} is refused: {why}")


# --- applying ---------------------------------------------------------------------------------------


def apply(target: Path, staged: Path, deleted: list[str], *, label: str, snapshot: str) -> None:
    """Make the layer at `target` (a fresh copy of snapshot `snapshot`'s) the present: remove the
    `deleted` paths, then move in the checked tree at `staged` (emptied of all but its directories)."""
    tree, source = FdTree(target), FdTree(staged)
    times: dict[str, tuple[int, int]] = {}  # directories touched -> their (atime, mtime) before
    carried: dict[str, int] = {}  # directories carried -> their mtime
    try:
        for path in deleted:
            _delete(tree, path.split("/"), times, label, snapshot)
        for relative, info in list(_listing(staged)):
            parts = relative.split("/") if relative else []
            if stat.S_ISDIR(info.st_mode):
                _directory(tree, source, parts, times, label)
                carried[relative] = info.st_mtime_ns
            else:
                _move(tree, source, parts, times, label)
        for relative, (atime, mtime) in [*times.items(), *((k, (v, v)) for k, v in carried.items())]:
            fd = tree.open_dir(relative.split("/") if relative else [])
            if fd is not None:
                try:
                    os.utime(fd, ns=(atime, mtime))
                finally:
                    os.close(fd)
    finally:
        tree.close()
        source.close()


def _listing(top: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under `top` ("" for itself), parents first, never following a symlink."""
    yield "", os.lstat(top)
    for directory, dirs, files in os.walk(top):
        dirs.sort()
        relative = os.path.relpath(directory, top)
        for name in sorted([*dirs, *files]):
            path = name if relative == "." else f"{relative}/{name}"
            yield path, os.lstat(os.path.join(directory, name))


def _parent(tree: FdTree, parts: list[str], times: dict[str, tuple[int, int]], label: str,
            missing: RejectedError | None = None) -> int:  # fmt: skip
    """The fd of the directory holding parts[-1] in the target, its times remembered first."""
    fd = tree.walk(parts[:-1], create=False)
    if fd is None:
        where = "/".join(parts)
        raise missing or _refused(label, f"{where!r} would go where the container's layer has no directory")
    key = "/".join(parts[:-1])
    if key not in times:
        info = os.fstat(fd)
        times[key] = (info.st_atime_ns, info.st_mtime_ns)
    return fd


def _delete(tree: FdTree, parts: list[str], times: dict[str, tuple[int, int]], label: str,
            snapshot: str) -> None:  # fmt: skip
    where = "/".join(parts)
    missing = _refused(label, f"it deletes {where!r}, which snapshot {snapshot} here does not hold")
    fd = _parent(tree, parts, times, label, missing)
    try:
        try:
            mode = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            raise missing from None
        tree.forget()
        if stat.S_ISDIR(mode):
            shutil.rmtree(parts[-1], dir_fd=fd)
        else:
            os.unlink(parts[-1], dir_fd=fd)
    finally:
        os.close(fd)


def _directory(tree: FdTree, source: FdTree, parts: list[str], times: dict[str, tuple[int, int]],
               label: str) -> None:  # fmt: skip
    """The carried directory `parts`: made where the target has none, its metadata set."""
    if parts:
        parent = _parent(tree, parts, times, label)
        try:
            if not tree.clear(parent, parts[-1], keep_dir=True):
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
            fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
        finally:
            os.close(parent)
    else:
        root = tree.walk([], create=False)
        assert root is not None
        fd = root
    model = source.open_dir(parts)
    assert model is not None  # the staging tree's own directory
    try:
        info = os.fstat(model)
        os.fchown(fd, info.st_uid, info.st_gid)
        os.fchmod(fd, stat.S_IMODE(info.st_mode))
        _same_xattrs(model, fd)
    finally:
        os.close(model)
        os.close(fd)


def _move(tree: FdTree, source: FdTree, parts: list[str], times: dict[str, tuple[int, int]],
          label: str) -> None:  # fmt: skip
    """Rename the carried non-directory `parts` into the target, replacing what is there."""
    origin = source.walk(parts[:-1], create=False)
    assert origin is not None  # the staging tree's own directory
    try:
        parent = _parent(tree, parts, times, label)
        try:
            tree.clear(parent, parts[-1], keep_dir=False)
            os.rename(parts[-1], parts[-1], src_dir_fd=origin, dst_dir_fd=parent)
        finally:
            os.close(parent)
    finally:
        os.close(origin)


def _kept(name: str) -> bool:
    """An extended attribute a layer's directory carries (the rest is this host's bookkeeping)."""
    return name in UPPER_XATTRS or name.startswith("user.")


def _same_xattrs(model: int, fd: int) -> None:
    wanted = {name: os.getxattr(model, name) for name in os.listxattr(model) if _kept(name)}
    for name in os.listxattr(fd):
        if _kept(name) and name not in wanted:
            os.removexattr(fd, name)
    for name, value in wanted.items():
        os.setxattr(fd, name, value)
