"""Carrying out a V2V plan (ops/v2v.py), each step undone should a later one fail.

The disks are made local (an OVA's extracted and checked, an XVA's assembled from checksummed
chunks, a bare OVF's or VMX's found beside it) in a staging directory of the image store that
always goes; the first is imported as an image by images/disk.py (explicit format, qemu-img checks,
no backing files), the others as block volumes of the pool; then the VM is created through
Lifecycle and the volumes attached. Undone in reverse on any failure, inside the staging context
(whose end also removes what deleting an image leaves).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.images.foreign import LocalDisk
from virtkit.images.staged import Progress, no_progress
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, VolumeRecord
from virtkit.ops.v2v import DiskPlan, Plan
from virtkit.store import Store

log = logging.getLogger(__name__)


@dataclass
class Imported:
    plan: Plan
    record: InstanceRecord
    image: ImageRecord
    volumes: list[VolumeRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run(root: Path, store: Store, plan: Plan, progress: Progress = no_progress) -> Imported:
    """Import as `plan` says; a failure undoes every step (no instance, image, volume or file left)."""
    from virtkit.ops.images import image_store

    undo: list[Callable[[], None]] = []
    with image_store(root, store).staging() as work:
        try:
            return _run(root, store, plan, work, undo, progress)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    log.exception("undoing a failed import of %s", plan.source.path.name)
            raise


def _run(
    root: Path, store: Store, plan: Plan, work: Path, undo: list[Callable[[], None]], progress: Progress
) -> Imported:
    from virtkit.images import foreign
    from virtkit.ops.lifecycle import Lifecycle, Request
    from virtkit.ops.nics import NicRequest
    from virtkit.ops.volumes import Volumes

    progress(f"reading {plan.source.path.name}", None)
    local = foreign.disks(plan.source, work)
    notes = [note for disk in local for note in disk.notes]
    image = _import_image(root, store, plan, local[0], undo, progress)
    volumes = [
        _import_volume(root, store, plan, disk, target, undo, progress)
        for disk, target in zip(local[1:], plan.disks[1:], strict=True)
    ]
    life = Lifecycle(root, store)
    nics = tuple(NicRequest(network=n.network, mac=n.mac, model=n.model) for n in plan.nics if n.network)
    request = Request(
        image=image.fingerprint,
        name=plan.name,
        kind=InstanceKind.VM,
        cpus=plan.cpus,
        memory=plan.memory,
        config={"firmware": plan.firmware, "devices": plan.devices, "machine": "q35"},
        nics=nics,
    )
    progress("creating the VM", None)
    record, runtime = life.create(request)
    undo.append(lambda: _ignore(life.delete(plan.name, force=True)))
    attach = Volumes(root, store)
    for volume in volumes:
        attach.attach(volume.pool, volume.name, plan.name)
    if plan.convert:
        progress("converting the guest", None)
        notes += _converted(root, store, plan.name)
    record = store.get(InstanceRecord, plan.name)
    return Imported(plan, record, image, volumes, notes + list(runtime.notices))


def _converted(root: Path, store: Store, name: str) -> list[str]:
    """Guest conversion of the new VM (ops/convert.py), as notes; one that cannot be done is a
    note too (the VM keeps emulated devices: a guest that is not Linux, or not recognised)."""
    from virtkit.errors import VirtkitError
    from virtkit.ops.convert import convert

    try:
        done = convert(root, store, name)
    except VirtkitError as exc:
        return [f"not converted ({exc}): the VM keeps emulated devices"]
    return [*(f"converted: {change}" for change in done.changes), *done.notes,
            f"devices: {done.devices_before} before the conversion, {done.devices_after} now"]  # fmt: skip


def _ignore(_result: object) -> None:
    """An undo step's result is not wanted."""


def _import_image(
    root: Path,
    store: Store,
    plan: Plan,
    disk: LocalDisk,
    undo: list[Callable[[], None]],
    progress: Progress,
) -> ImageRecord:
    from virtkit.images.disk import import_disk
    from virtkit.ops.images import add_staged, image_store

    images = image_store(root, store)
    before = {record.fingerprint for record in images.list()}
    record = add_staged(
        root,
        store,
        lambda staging: import_disk(disk.path, staging, name=plan.name, fmt=disk.format, progress=progress),
        alias=plan.name,
    )
    if record.fingerprint in before:  # the same disk was imported before: only the alias is ours
        undo.append(lambda: _ignore(images.alias_remove(plan.name)))
    else:
        undo.append(lambda: _ignore(images.delete(record.fingerprint)))
    return record


def _import_volume(
    root: Path,
    store: Store,
    plan: Plan,
    disk: LocalDisk,
    target: DiskPlan,
    undo: list[Callable[[], None]],
    progress: Progress,
) -> VolumeRecord:
    from virtkit.images.disk import OUTPUT, import_disk
    from virtkit.ops.images import image_store
    from virtkit.ops.storage import Storage

    assert target.volume is not None
    storage = Storage(root, store)
    with image_store(root, store).staging() as staging:
        import_disk(disk.path, staging, name=target.volume, fmt=disk.format, progress=progress)
        volume = storage.adopt_volume(plan.pool, target.volume, staging / OUTPUT)
    undo.append(lambda: storage.delete_volume(volume.pool, volume.name))
    return volume
