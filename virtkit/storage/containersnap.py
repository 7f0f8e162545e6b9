"""Snapshots of a container: a copy of its writable layer (the overlay's upper directory).

A container's root filesystem is the image's tree (read-only, shared) under its own upper
directory; everything it ever changed is in upper/: new and changed files, whiteouts for what it
deleted, opaque directories. A copy of upper/ is therefore the whole of its state. The copy
(storage/snapshots.copy) keeps what overlayfs reads there, owners in the container's id range
included.

Restore puts a fresh copy of the snapshot's upper/ in place of the container's and empties the
overlay's work directory (overlayfs wants it empty of its scratch when it mounts), with the owner
and mode the old ones had: both are swapped in by renames, undone if one fails, so the container
is left either as it was or restored. It must be stopped, its overlay unmounted: restore refuses
while an overlay mount still uses this upper directory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import StateError
from virtkit.storage.archive import remove_tree
from virtkit.storage.snapshots import Captured, copy, sweep, usage
from virtkit.store.files import temp_name

log = logging.getLogger(__name__)

UPPER = "upper"
NO_STATE = (
    "stateful snapshots of containers are not supported: keeping their processes' memory needs CRIU "
    "(checkpoint/restore in userspace), which virtkit does not use (it fails on the kernels tested)"
)
NO_STATE_HINT = "take it without --stateful: its files are kept, and its processes start afresh on restore"


def _escaped(path: Path) -> str:
    """`path` as mountinfo writes it (octal escapes for space, tab, newline, backslash)."""
    text = str(path)
    for char, code in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        text = text.replace(char, code)
    return text


def overlay_uses(upper: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether an overlay mount has `upper` as its upper directory."""
    wanted = f"upperdir={_escaped(upper)}"
    for line in mountinfo.read_text().splitlines():
        _, _, tail = line.partition(" - ")
        fields = tail.split(" ")
        if fields and fields[0] == "overlay" and wanted in fields[-1].split(","):
            return True
    return False


@dataclass(frozen=True)
class ContainerBackend:
    """The snapshots of the container whose upper and work directories these are (both in its
    instance directory)."""

    upper: Path
    work: Path
    freeze: bool = True  # its processes write straight to upper/: they are frozen while it is copied

    def forget(self, name: str) -> None:
        """Nothing outside the snapshot's directory (which ops remove)."""

    def capture(self, name: str, into: Path) -> Captured:
        if not self.upper.is_dir():
            raise StateError(f"the container has no writable layer at {self.upper}")
        copy(self.upper, into / UPPER, what=f"copying the writable layer for snapshot {name}")
        return Captured(files=(UPPER,), size=usage(into / UPPER) or 0)

    def capture_state(self, name: str, into: Path) -> Captured:
        raise StateError(NO_STATE, hint=NO_STATE_HINT)

    def load_state(self, name: str, captured: Captured) -> None:
        raise StateError(NO_STATE, hint=NO_STATE_HINT)

    def check(self, name: str, captured: Captured, source: Path) -> None:
        if not (source / UPPER).is_dir() or (source / UPPER).is_symlink():
            raise StateError(
                f"snapshot {name} has lost its data: {source / UPPER} is missing",
                hint=f"delete it: virtkit snapshot delete INSTANCE {name}",
            )

    def restore(self, name: str, captured: Captured, source: Path) -> None:
        if overlay_uses(self.upper):
            raise StateError(
                f"the container's root filesystem is still mounted (upper directory {self.upper})",
                hint="stop the container first",
            )
        home = self.upper.parent
        sweep(home, (UPPER, "work"))
        staged_upper = home / temp_name(UPPER)
        staged_work = home / temp_name(self.work.name)
        try:
            copy(source / UPPER, staged_upper, what=f"copying the writable layer of snapshot {name}")
            empty_like(self.work, staged_work)
            swap_in([(staged_upper, self.upper), (staged_work, self.work)])
        finally:
            remove_tree(staged_upper)
            remove_tree(staged_work)

    def remove(self, name: str, captured: Captured) -> None:
        """Nothing outside the snapshot's directory."""


def empty_like(model: Path, path: Path) -> None:
    """A new empty directory at `path` with the owner and mode of the directory `model`."""
    info = os.lstat(model) if model.is_dir() else os.lstat(model.parent)
    os.mkdir(path, 0o700)
    os.chown(path, info.st_uid, info.st_gid)
    os.chmod(path, info.st_mode & 0o7777)


def swap_in(pairs: list[tuple[Path, Path]]) -> None:
    """Put each new directory in place of its target, by renames: all of them, or (undone) none.
    The targets' old contents are removed afterwards; what cannot be is left for `sweep`."""
    done: list[tuple[Path, Path, Path | None]] = []  # (new, target, old) of the renames made
    try:
        for new, target in pairs:
            old = target.with_name(temp_name(target.name)) if os.path.lexists(target) else None
            if old is not None:
                os.rename(target, old)
            try:
                os.rename(new, target)
            except BaseException:
                if old is not None:
                    os.rename(old, target)
                raise
            done.append((new, target, old))
    except BaseException:
        for new, target, old in reversed(done):
            os.rename(target, new)
            if old is not None:
                os.rename(old, target)
        raise
    for _new, _target, old in done:
        try:
            if old is not None:
                remove_tree(old)
        except OSError as exc:  # the swap is made; a leftover is swept next time
            log.warning("cannot remove %s: %s", old, exc)
