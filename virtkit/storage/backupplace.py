"""Turning a checked, staged backup into an instance's files: its disks rebuilt (snapshots and
all), its files and layers put where the instance keeps them.

Everything here works on the staging directory (storage/backupread.py made it, root's own) and
on the new instance's directory; ops/backup.py decides when, under the instance's lock, and
undoes it all if a later step fails.
"""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

from virtkit.errors import RejectedError
from virtkit.storage import backupdisk
from virtkit.storage.archive import remove_tree
from virtkit.storage.backupformat import BASE_IMAGE, DiskEntry, Manifest
from virtkit.storage.backupread import Staged
from virtkit.storage.snapshots import snapshots_dir, stage

BUILT = "built"


def disk_plan(manifest: Manifest, label: str) -> dict[str, list[DiskEntry]]:
    """Each disk's states in the order they are applied; RejectedError unless each is the
    differences to the one before it (the first to the image or nothing, or to `since`), every
    snapshot's state comes in the snapshots' order, and the last is the disk as it was."""
    order = {snapshot.name: index for index, snapshot in enumerate(manifest.snapshots)}
    plans: dict[str, list[DiskEntry]] = {}
    for disk in manifest.disks:
        plans.setdefault(disk.file, []).append(disk)
    for file, states in plans.items():
        first = states[0].base
        allowed_first = {f"{file}@{manifest.since.snapshot}"} if manifest.since else {BASE_IMAGE, None}
        if first not in allowed_first or (first == BASE_IMAGE and manifest.image is None):
            raise RejectedError(f"archive {label} is refused: disk {states[0].id} has an unknown base")
        for previous, state in itertools.pairwise(states):
            if state.base != previous.id:
                raise RejectedError(f"archive {label} is refused: disk {state.id} is not over {previous.id}")
        positions = [order[s.state] for s in states if s.state is not None]
        ordered = positions == sorted(set(positions))
        if states[-1].state is not None or not ordered:
            raise RejectedError(f"archive {label} is refused: the states of disk {file} are out of order")
    return plans


def check_disks(manifest: Manifest, staged: Staged) -> None:
    """Every staged disk is a self-contained qcow2 of the size its manifest says."""
    for disk in manifest.disks:
        backupdisk.check_part(staged.parts[disk.id], f"{disk.id} (in the archive)", disk.virtual_size)


def rebuild(plans: dict[str, list[DiskEntry]], staged: Staged, base: Path | None) -> dict[str, Path]:
    """Each disk rebuilt in the staging directory, over `base` (the image's disk, or the disk an
    incremental applies to) where its first state says so; file name -> rebuilt disk."""
    out_dir = staged.dir / BUILT
    out_dir.mkdir(mode=0o700, exist_ok=True)
    built = {}
    for file, states in plans.items():
        out = out_dir / file
        first_base = base if states[0].base is not None else None
        backupdisk.assemble([(staged.parts[s.id], s.state) for s in states], first_base, out)
        built[file] = out
    return built


def put(source: Path, target: Path, *, fresh_tree: bool = False) -> None:
    """Move `source` to `target`, with the owner and mode of what was there (then replaced).
    `fresh_tree`: `target` is a writable layer the driver has just made for the new instance,
    which may hold what it put there (a metacopy host's copy-ups of the image: the archived layer
    has them made again); otherwise a directory there must be empty."""
    if os.path.lexists(target):
        info = os.lstat(target)
        if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
            os.lchown(source, info.st_uid, info.st_gid)
            os.chmod(source, stat.S_IMODE(info.st_mode))
        if stat.S_ISDIR(info.st_mode) and not os.path.islink(target):
            if fresh_tree:
                remove_tree(target)
            else:
                os.rmdir(target)  # an empty directory the driver made
    if stat.S_ISREG(os.lstat(source).st_mode):
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)  # a disk rebuilt without syncs (qemu-img -t unsafe) is on disk before it is used
        finally:
            os.close(fd)
    os.replace(source, target)


def snapshot_home(instance_dir: Path, name: str, files: dict[str, Path]) -> Path:
    """Snapshot `name`'s directory, holding `files` (bare name -> staged file or tree), made under a
    temporary name and renamed into place."""
    temporary = stage(snapshots_dir(instance_dir), name)
    for bare, source in files.items():
        os.rename(source, temporary / bare)
    final = temporary.parent / name
    os.rename(temporary, final)
    return final
