"""Importing an incremental backup (`virtkit export --since SNAP`): the changes a VM's disks or a
container's writable layer saw since snapshot SNAP, applied to an instance here that has that very
snapshot (imported from a full backup of the same instance: its `origin` is the same).

The instance must be stopped. A VM: each disk is first marked with a temporary internal snapshot
of what it holds now, then put back to SNAP, and the changes are committed into it; if any step
fails, every disk goes back to the mark. The mark is removed in either case. A container: a fresh
copy of SNAP's layer, under a temporary name beside the present one, gets the archive's deletions
and changed entries (storage/treediff.py), then replaces the layer (and an emptied work directory)
by renames, as a snapshot restore does: until then nothing of the container was touched, and a
failure removes the copy. Snapshots are kept; what the instance held after SNAP is replaced by the
source's present.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.drivers.base import InstancePaths
from virtkit.errors import RejectedError, StateError, ToolError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, InstanceState, SnapshotRecord
from virtkit.storage import backupdisk, backupplace, treediff
from virtkit.storage.archive import remove_tree
from virtkit.storage.backupexport import origin
from virtkit.storage.backupformat import UPPER, DiskEntry
from virtkit.storage.backupread import Staged
from virtkit.storage.backuptree import IdRange, shift_tree
from virtkit.storage.containersnap import empty_like, overlay_uses, swap_in
from virtkit.storage.snapshots import copy, snapshot_dir, sweep, usage
from virtkit.storage.vmsnap import qemu_img, tags
from virtkit.store.files import temp_name
from virtkit.units import format_size

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
        kind = staged.manifest.instance.kind
        if record.kind is not kind:
            raise RejectedError(f"archive {label} is refused: it holds the changes of a {kind.value}, and "
                                f"{name!r} is a {record.kind.value}")  # fmt: skip
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
        if record.kind is InstanceKind.CONTAINER:
            _apply_layer(backups, staged, record, paths, since.snapshot, label)
            return record
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


def _apply_layer(backups: Backups, staged: Staged, record: InstanceRecord, paths: InstancePaths,
                 snapshot: str, label: str) -> None:  # fmt: skip
    """The container's layer made the source's present: snapshot `snapshot`'s, changed."""
    from virtkit.drivers.oci import rootfs
    from virtkit.drivers.oci.plan import ContainerFiles

    layout = ContainerFiles(paths)
    if overlay_uses(layout.upper):
        raise StateError(f"the root filesystem of {record.name!r} is still mounted (upper directory "
                         f"{layout.upper})", hint=f"virtkit stop {record.name}")  # fmt: skip
    source = snapshot_dir(paths.dir, snapshot) / UPPER
    if not source.is_dir() or source.is_symlink():
        raise StateError(f"snapshot {snapshot} of {record.name!r} has lost its data: {source} is missing")
    tree, deleted = _changes(staged, label)
    need = (usage(source) or 0) + staged.manifest.declared_bytes()
    free = shutil.disk_usage(paths.dir).free
    if need > free:
        raise StateError(f"applying {label} needs up to {format_size(need)}; {paths.dir} has "
                         f"{format_size(free)} free")  # fmt: skip
    shift = rootfs.saved_shift(paths.dir)
    if shift is not None:
        shift_tree(tree, IdRange(shift.uid, shift.gid, shift.size))
    home = layout.upper.parent
    sweep(home, (UPPER, layout.work.name))
    new_upper, new_work = home / temp_name(UPPER), home / temp_name(layout.work.name)
    try:
        copy(source, new_upper, what=f"copying the writable layer of snapshot {snapshot}")
        treediff.apply(new_upper, tree, deleted, label=label, snapshot=snapshot)
        if shift is not None and shift.mode == rootfs.METACOPY:  # the image's files shown in the range
            from virtkit.ops.chains import ContainerChain

            image = backups.store.get(ImageRecord, record.image or "")
            lowers = ContainerChain().lowers(record, paths, image, backups.images.path(image))
            scratch = staged.dir / "scratch-upper"
            scratch.mkdir(mode=0o700)
            rootfs.prepare(rootfs.Layers(lowers[-1], new_upper, scratch / "work", scratch / "merged", shift,
                                         tuple(lowers[:-1])))  # fmt: skip
        info = os.lstat(layout.upper)  # the layer's root keeps the owner and mode it has (as import does)
        os.lchown(new_upper, info.st_uid, info.st_gid)
        os.chmod(new_upper, stat.S_IMODE(info.st_mode))
        empty_like(layout.work, new_work)
        swap_in([(new_upper, layout.upper), (new_work, layout.work)])
    finally:
        remove_tree(new_upper)
        remove_tree(new_work)


def _changes(staged: Staged, label: str) -> tuple[Path, list[str]]:
    """The staged tree of changed entries and the checked list of deleted paths."""
    manifest = staged.manifest
    trees = [(t.id, t.role, t.state) for t in manifest.trees]
    listed = [f for f in manifest.files if f.role == "deleted"]
    if manifest.disks or trees != [(UPPER, UPPER, None)] or [f.id for f in listed] != [treediff.DELETED]:
        raise RejectedError(f"archive {label} is refused: it is not a container's incremental backup "
                            "(one tree upper and one list of deleted paths)")  # fmt: skip
    if listed[0].size > treediff.MAX_DELETED_BYTES:
        raise RejectedError(f"archive {label} is refused: its list of deleted paths is larger than "
                            f"{format_size(treediff.MAX_DELETED_BYTES)}")  # fmt: skip
    data = staged.parts[treediff.DELETED].read_bytes()
    return staged.trees[UPPER], treediff.parse_deleted(data, label)
