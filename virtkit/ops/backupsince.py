"""Importing an incremental backup (`virtkit export --since SNAP`): the changes a VM's disks saw
since snapshot SNAP, applied to an instance here that has that very snapshot (imported from a
full backup of the same instance: its `origin` is the same).

The instance must be stopped. Each disk is first marked with a temporary internal snapshot of what
it holds now, then put back to SNAP, and the changes are committed into it; if any step fails,
every disk goes back to the mark. The mark is removed in either case. The disks' snapshots are
kept; what the instance held after SNAP is replaced by the source's present.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.drivers.base import InstancePaths
from virtkit.errors import RejectedError, StateError, ToolError
from virtkit.model import InstanceKind, InstanceRecord, InstanceState, SnapshotRecord
from virtkit.storage import backupdisk, backupplace
from virtkit.storage.backupexport import origin
from virtkit.storage.backupformat import DiskEntry
from virtkit.storage.backupread import Staged
from virtkit.storage.vmsnap import qemu_img, tags

if TYPE_CHECKING:
    from virtkit.ops.backup import Backups

log = logging.getLogger(__name__)

MARK = ".vk-import-undo"


def apply_incremental(backups: Backups, staged: Staged, plans: dict[str, list[DiskEntry]], name: str,
                      label: str) -> InstanceRecord:  # fmt: skip
    """Apply the staged incremental archive to instance `name`; its record."""
    since = staged.manifest.since
    assert since is not None
    store = backups.store
    with store.lock("instance", name):
        record = store.get(InstanceRecord, name)
        paths = InstancePaths.of(backups.root, record.name)
        if record.kind is not InstanceKind.VM:
            raise RejectedError(f"archive {label} is refused: an incremental backup applies to VMs only")
        if backups.drivers(record.kind).status(record, paths).state is not InstanceState.STOPPED:
            raise StateError(f"instance {name!r} must be stopped to apply {label}",
                             hint=f"virtkit stop {name}")  # fmt: skip
        snapshot = store.get(SnapshotRecord, record.name, since.snapshot)
        if since.origin not in (snapshot.config.get("origin"), origin(record.uuid, snapshot)):
            raise RejectedError(
                f"archive {label} holds the changes since snapshot {since.snapshot} of another instance "
                f"than {name!r} (whose snapshot of that name was taken elsewhere or at another time)",
                hint="import it onto the instance the full backup it belongs to was imported as",
            )
        targets = {file: paths.dir / file for file in plans}
        for file, target in targets.items():
            if since.snapshot not in tags(target):
                raise StateError(f"the disk {file} of {name!r} holds no snapshot {since.snapshot}")
        _apply(staged, plans, targets, since.snapshot)
        for entry in staged.manifest.files:
            if entry.role == "instance":
                backupplace.put(staged.parts[entry.id], paths.dir / entry.file)
        return record


def _apply(staged: Staged, plans: dict[str, list[DiskEntry]], targets: dict[str, Path],
           snapshot: str) -> None:  # fmt: skip
    marked: list[Path] = []
    try:
        for target in targets.values():
            if MARK in tags(target):
                qemu_img(target, ["snapshot", "-q", "-d", MARK, "--image-opts"], f"clearing {target.name}")
            qemu_img(target, ["snapshot", "-q", "-c", MARK, "--image-opts"], f"marking {target.name}")
            marked.append(target)
        for file, states in plans.items():
            qemu_img(targets[file], ["snapshot", "-q", "-a", snapshot, "--image-opts"], f"restoring {file}")
            for state in states:
                backupdisk.apply_onto(staged.parts[state.id], targets[file])
    except BaseException:
        for target in marked:
            try:
                qemu_img(target, ["snapshot", "-q", "-a", MARK, "--image-opts"], f"undoing {target.name}")
            except (ToolError, StateError) as exc:
                log.error("cannot put %s back: %s", target, exc)
        raise
    finally:
        for target in marked:
            try:
                qemu_img(target, ["snapshot", "-q", "-d", MARK, "--image-opts"], f"unmarking {target.name}")
            except (ToolError, StateError) as exc:
                log.error("cannot remove the mark on %s: %s", target, exc)
