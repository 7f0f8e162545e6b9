"""What every kind of snapshot shares: where its data lives, the contract of a kind's backend, and
the copy that keeps everything a root filesystem needs.

Layout, under the instance's directory (so deleting the instance deletes its snapshots' data)::

    ROOT/instances/NAME/snapshots/          root, 0700: nothing the guest runs as may enter
    ROOT/instances/NAME/snapshots/SNAP/     one snapshot's copied files (a container's upper/,
                                            a VM's UEFI variables); a VM's disks hold the rest
                                            as qcow2 internal snapshots named SNAP

A snapshot's directory is made under a temporary name (``.SNAP.vktmp.PID.TOKEN``, as
store/files.py names them) and renamed into place only once complete: its final name never shows
a half-made snapshot, and `sweep` removes what a killed virtkit left.

Copies are made by GNU cp with the attributes it must keep named one by one
(``--preserve=mode,ownership,timestamps,links,xattr``): unlike ``cp -a``, which silently skips
extended attributes it cannot copy, this fails loudly. That keeps what overlayfs needs: owners
in a container's id range, modes (setuid too), trusted.overlay.* and security.* attributes,
whiteouts (0/0 character devices), hard links within the copy, holes of sparse files; and
``--reflink=auto`` makes it instant on filesystems that share extents (btrfs, XFS).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from virtkit.errors import StateError
from virtkit.images.tools import run_tool
from virtkit.storage.archive import remove_tree
from virtkit.storage.volumes import usage
from virtkit.store.files import TEMP_MARKER, temp_name

log = logging.getLogger(__name__)

SNAPSHOTS_DIR = "snapshots"
DIR_MODE = 0o700
COPY_TIMEOUT = 3600.0  # a copy of many GiB on a slow disk; past that something is stuck
CP_ARGS = (
    "cp", "--no-dereference", "--recursive", "--preserve=mode,ownership,timestamps,links,xattr",
    "--reflink=auto", "--sparse=auto", "--one-file-system", "--no-target-directory",
)  # fmt: skip
_TEMP_RE = re.compile(r"\..*" + re.escape(TEMP_MARKER) + r"(?P<pid>[0-9]+)\.[0-9a-f]{8}", re.DOTALL)

__all__ = [
    "SNAPSHOTS_DIR",
    "Backend",
    "Captured",
    "copy",
    "snapshot_dir",
    "snapshots_dir",
    "stage",
    "sweep",
    "usage",
]


@dataclass(frozen=True)
class Captured:
    """What a backend captured: the disks now holding an internal snapshot, the files copied into
    the snapshot's directory (both as bare names in the instance's directory), the bytes kept."""

    disks: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    size: int = 0
    notes: tuple[str, ...] = field(default=(), compare=False)  # said to the user
    stateful: bool = False  # the first disk also holds the memory and device state


class Backend(Protocol):
    """How one kind of instance is snapshotted. `into`/`source` is the snapshot's directory. Ops hold
    the instance's lock around every call, and stop the instance before `restore`."""

    @property
    def freeze(self) -> bool:
        """Whether ops freeze (pause) a running instance around `capture`: a container's files are
        read from the host, its processes must not write meanwhile; QEMU snapshots atomically."""
        ...

    def forget(self, name: str) -> None:
        """Remove what a crashed create may have left of snapshot `name` (it has no record)."""

    def capture(self, name: str, into: Path) -> Captured:
        """Take snapshot `name`; on failure nothing of it is left (`into` is removed by ops)."""

    def capture_state(self, name: str, into: Path) -> Captured:
        """Take snapshot `name` of the running instance with its memory and device state, so that
        `load_state` resumes it where it was; StateError when this instance or kind cannot (a
        container: no CRIU). On failure nothing of it is left, as with `capture`."""

    def load_state(self, name: str, captured: Captured) -> None:
        """Put the running (or paused, or not yet started) instance back to stateful snapshot `name`
        and let it run on from there. On failure its state may be lost: ops stop it."""

    def check(self, name: str, captured: Captured, source: Path) -> None:
        """Raise StateError when the snapshot's data is not all there (before anything is stopped)."""

    def restore(self, name: str, captured: Captured, source: Path) -> None:
        """Put the instance back to snapshot `name` (stopped); on failure it is left as it was."""

    def remove(self, name: str, captured: Captured) -> None:
        """Remove the snapshot's data outside `source` (its internal disk snapshots); what is
        already gone is fine."""


def snapshots_dir(instance_dir: Path) -> Path:
    """The instance's snapshots directory, made (root, 0700) if missing. A VM's directory is writable
    by QEMU's user (sticky, group-writable): what is there must be root's own directory, not a
    symlink or a directory that user made."""
    return own_dir(instance_dir / SNAPSHOTS_DIR)[0]


def own_dir(path: Path) -> tuple[Path, bool]:
    """Snapshot directory `path`, made (root, 0700) if missing; (it, whether made now). What is
    there must be root's own directory, not a symlink or another user's."""
    made = False
    try:
        os.mkdir(path, DIR_MODE)
        made = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise StateError(f"cannot make {path}: {exc.strerror or exc}") from exc
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise StateError(
            f"{path} is not virtkit's snapshot directory: a {_kind(info.st_mode)} of uid {info.st_uid}",
            hint=f"move it away, then retry: mv {path} {path}.suspect",
        )
    if stat.S_IMODE(info.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path, made


def _kind(mode: int) -> str:
    return "symlink" if stat.S_ISLNK(mode) else "directory" if stat.S_ISDIR(mode) else "file"


def snapshot_dir(instance_dir: Path, name: str) -> Path:
    """Where snapshot `name`'s copied files are (not made here). `name` is a validated name."""
    return instance_dir / SNAPSHOTS_DIR / name


def stage(snapshots: Path, name: str) -> Path:
    """A new, empty directory under a temporary name, to become snapshot `name` by a rename."""
    path = snapshots / temp_name(name)
    os.mkdir(path, DIR_MODE)
    return path


def sweep(directory: Path, stems: tuple[str, ...] | None = None) -> list[Path]:
    """Remove the temporary entries of `directory` whose process is gone (with `stems`, only those
    made for these names); what was removed."""
    removed: list[Path] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for entry in names:
        match = _TEMP_RE.fullmatch(entry)
        if not match or _alive(int(match["pid"])):
            continue
        if stems is not None and not any(entry.startswith(f".{stem}{TEMP_MARKER}") for stem in stems):
            continue
        remove_tree(directory / entry)
        log.info("removed %s, left by an interrupted snapshot operation", directory / entry)
        removed.append(directory / entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def copy(source: Path, dest: Path, *, what: str) -> None:
    """Copy the file or tree `source` to the new path `dest`, keeping everything (see above)."""
    if os.path.lexists(dest):
        raise StateError(f"{dest} already exists")
    try:
        run_tool([*CP_ARGS, str(source), str(dest)], timeout=COPY_TIMEOUT, what=what, package="coreutils")
    except BaseException:
        remove_tree(dest)
        raise
