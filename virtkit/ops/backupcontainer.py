"""The container side of backups (ops/backup.py; design: docs/backups.md): what an export reads of a
container (its writable layer, copied while frozen if it runs, its snapshots' layers, and for a
clone the whole tree under them), and where an import puts it back.

A container made by `virtkit copy` rests on more than its image (shared layers, or a tree of its
own: docs/clones.md); its export carries the whole tree those make with the image (the archive's
base tree) and the import rests on it alone, as a full copy does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.drivers.base import InstancePaths
from virtkit.images.staged import ROOTFS
from virtkit.model import ImageRecord, InstanceRecord, InstanceState, SnapshotRecord
from virtkit.storage import backupexport, backupplace, backupread
from virtkit.storage.backupexport import Parts
from virtkit.storage.backupformat import BASE_TREE, UPPER
from virtkit.storage.backuptree import IdRange, shift_tree
from virtkit.storage.snapshots import copy, snapshot_dir

if TYPE_CHECKING:
    from virtkit.ops.backup import Backups


def gather(backups: Backups, record: InstanceRecord, image: ImageRecord, chosen: list[SnapshotRecord],
           staging: Path, parts: Parts, since: SnapshotRecord | None = None) -> str:  # fmt: skip
    """The container's layer (copied while frozen if it runs) and its snapshots' layers; with
    `since`, only the layer's difference to that snapshot's (storage/treediff.py). Its id mode."""
    from virtkit.drivers.oci.plan import ContainerFiles
    from virtkit.drivers.oci.rootfs import saved_shift

    driver, paths = backups.drivers(record.kind), InstancePaths.of(backups.root, record.name)
    shift = saved_shift(paths.dir)
    ids = IdRange(shift.uid, shift.gid, shift.size) if shift is not None else None
    lower = _whole_base(backups, record, image, paths, staging, parts, carry=since is None)
    upper = ContainerFiles(paths).upper
    state = driver.status(record, paths).state
    if state in (InstanceState.RUNNING, InstanceState.PAUSED):
        copied = staging / UPPER
        if state is InstanceState.RUNNING:
            driver.pause(record, paths)
        try:
            copy(upper, copied, what="copying the writable layer")
        finally:
            if state is InstanceState.RUNNING:
                driver.resume(record, paths)
        upper = copied
    if since is not None:
        base = snapshot_dir(paths.dir, since.name) / UPPER
        backupexport.gather_tree_since(upper, base, since.name, staging, parts, ids=ids, lower=lower)
        return shift.mode if shift is not None else "none"
    backupexport.gather_tree(UPPER, UPPER, upper, None, parts, ids=ids, lower=lower)
    for snapshot in chosen:
        top = snapshot_dir(paths.dir, snapshot.name) / UPPER
        backupexport.gather_tree(f"{UPPER}@{snapshot.name}", UPPER, top, snapshot.name, parts,
                                 ids=ids, lower=lower)  # fmt: skip
    return shift.mode if shift is not None else "none"


def _whole_base(backups: Backups, record: InstanceRecord, image: ImageRecord, paths: InstancePaths,
                staging: Path, parts: Parts, *, carry: bool) -> Path:  # fmt: skip
    """The tree under the container's writable layer: its image's; or, for a clone on layers or
    one with a tree of its own, that whole tree, carried with `carry` (the archive's base tree).
    Layers are merged by the kernel into a copy in `staging`; a tree of its own is only read
    (nothing writes it)."""
    from virtkit.drivers.oci.rootfs import METACOPY, saved_shift
    from virtkit.ops.chains import BASE_DIR, ContainerChain
    from virtkit.storage import layertree

    image_dir = backups.images.path(image)
    if not record.layers and record.base == "image":
        return image_dir / image.files[ROOTFS]
    if not record.layers and record.base == "own":
        whole = paths.dir / BASE_DIR
    else:
        whole = staging / BASE_TREE
        shift = saved_shift(paths.dir)
        layertree.merged_copy(ContainerChain().lowers(record, paths, image, image_dir), whole,
                              metacopy=bool(shift and shift.mode == METACOPY))  # fmt: skip
    if carry:
        backupexport.gather_tree(BASE_TREE, BASE_TREE, whole, None, parts)
        parts.notes.append(f"{record.name} rests on layers or a tree of its own: that whole tree is "
                           "carried (base), and the import rests on it as a full copy does")  # fmt: skip
    return whole


def place(backups: Backups, record: InstanceRecord, image: ImageRecord, staged: backupread.Staged,
          paths: InstancePaths, snapshot_files: dict[str, dict[str, Path]]) -> None:  # fmt: skip
    """The imported container's trees in their place (its base tree, if it has one, first: the
    record then rests on it); its snapshots' layers into `snapshot_files`."""
    from virtkit.drivers.oci import rootfs
    from virtkit.drivers.oci.plan import ContainerFiles
    from virtkit.ops.chains import BASE_DIR

    lower = backups.images.path(image) / image.files[ROOTFS]
    if BASE_TREE in staged.trees:
        lower = paths.dir / BASE_DIR
        backupplace.put(staged.trees[BASE_TREE], lower)
        record.base = "own"
        backups.store.put(record)
    layout = ContainerFiles(paths)
    shift = rootfs.saved_shift(paths.dir)
    for tree in staged.manifest.trees:
        if tree.role != UPPER:
            continue
        top = staged.trees[tree.id]
        if shift is not None:
            shift_tree(top, IdRange(shift.uid, shift.gid, shift.size))
            if shift.mode == rootfs.METACOPY:  # the base's files shown in the range, as `create` does
                scratch = staged.dir / f"scratch-{tree.id}"
                scratch.mkdir(mode=0o700)
                rootfs.prepare(rootfs.Layers(lower, top, scratch / "work", scratch / "merged", shift))
        if tree.state is None:
            backupplace.put(top, layout.upper, fresh_tree=True)
        else:
            snapshot_files[tree.state][UPPER] = top
