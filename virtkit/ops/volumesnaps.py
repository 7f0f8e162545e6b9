"""Snapshots of pool volumes: `virtkit volume snapshot create|list|restore|delete POOL VOLUME [SNAP]`.

As Incus snapshots its custom volumes (`incus storage volume snapshot ...`): a block volume gets a
qcow2 internal snapshot in its own disk, a filesystem volume a copy of its directory beside it in
its pool (storage/volumesnap.py). Each snapshot is a record (VolumeSnapshotRecord, keyed by pool,
volume and name, deleted with its volume: ops/storage.py removes the data, the store's foreign key
the records).

Every verb holds the storage lock, and, when the volume is attached, the lock of the instance it is
attached to first (the order attaching takes them): the attachment and the instance's state cannot
change meanwhile. Attached to a stopped instance, a volume is snapshotted and restored as a free
one. Attached to a running (or paused) one:

- a block volume of a VM: refused (its QEMU holds the disk's write lock; taking the snapshot
  through QEMU is not done yet): stop the VM or detach the volume;
- a filesystem volume of a container: taken, with the container frozen (the cgroup freezer, as
  for its own snapshots) while the directory is copied, a paused one left paused: consistent as
  after a power cut;
- restore is refused (the instance would see its files swapped under it): stop it first. Deleting
  a snapshot of a filesystem volume is allowed, of a running VM's block volume refused.

Create takes the data, then writes the record: a failure of either removes the data again. Restore
checks the snapshot's data is there before touching the volume. Delete removes the data, then the
record; data already gone is fine, so a failed delete can be repeated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from virtkit.drivers.base import Driver, InstancePaths, get_driver
from virtkit.errors import (
    BusyError,
    ConflictError,
    NotFoundError,
    StateError,
    ToolError,
    VirtkitError,
    host_errors,
)
from virtkit.model import (
    InstanceRecord,
    InstanceState,
    PoolRecord,
    VolumeAttachment,
    VolumeRecord,
    VolumeSnapshotRecord,
    VolumeType,
    format_size,
    validate_name,
)
from virtkit.ops.lifecycle import DriverFor
from virtkit.ops.storage import Storage
from virtkit.storage import pools, volumes, volumesnap
from virtkit.store import Store

log = logging.getLogger(__name__)

Clock = Callable[[], float]

LIVE = (InstanceState.RUNNING, InstanceState.PAUSED)
_DEFAULT = re.compile(r"snap([0-9]{1,9})")
_TRIES = 3  # the volume attached or detached between reading it and taking the locks: read again


@dataclass(frozen=True)
class Holder:
    """The instance a volume is attached to, as it is while its lock is held."""

    record: InstanceRecord
    driver: Driver
    paths: InstancePaths
    state: InstanceState
    live: bool  # its process runs (running or paused)


def _named(volume: VolumeRecord) -> str:
    return f"volume {volume.name!r} of pool {volume.pool!r}"


class VolumeSnapshots:
    """The volume snapshot verbs over one state root."""

    def __init__(
        self, root: Path, store: Store, drivers: DriverFor = get_driver, now: Clock = time.time
    ) -> None:
        self.root = root
        self.store = store
        self.storage = Storage(root, store)
        self.drivers = drivers
        self.now = now

    # --- reading --------------------------------------------------------------------------------

    def list(self, pool: str, volume: str) -> list[VolumeSnapshotRecord]:
        """The volume's snapshots, oldest first."""
        record = self.storage.volume(pool, volume)
        found = self.store.list(VolumeSnapshotRecord, pool=record.pool, volume=record.name)
        return sorted(found, key=lambda snapshot: (snapshot.created_at, snapshot.name))

    def get(self, pool: str, volume: str, name: str) -> VolumeSnapshotRecord:
        """One snapshot; NotFoundError names the pool, volume or snapshot that is missing."""
        return self._get(self.storage.volume(pool, volume), validate_name(name, what="snapshot name"))

    def _get(self, volume: VolumeRecord, name: str) -> VolumeSnapshotRecord:
        found = self.store.find(VolumeSnapshotRecord, volume.pool, volume.name, name)
        if found is None:
            raise NotFoundError(
                f"snapshot {name!r} of {_named(volume)} not found",
                hint=f"see them: virtkit volume snapshot list {volume.pool} {volume.name}",
            )
        return found

    # --- changing -------------------------------------------------------------------------------

    def create(
        self, pool: str, volume: str, name: str | None = None
    ) -> tuple[VolumeSnapshotRecord, tuple[str, ...]]:
        """Snapshot the volume as `name` (default: snapN, the next number); the record and notes."""
        wanted = validate_name(name, what="snapshot name") if name is not None else None
        with self._held(pool, volume) as (record, holder), host_errors(f"snapshotting {_named(record)}"):
            path = self._path(record)
            if record.type is VolumeType.BLOCK:
                return self._create_block(record, holder, path, wanted)
            return self._create_dir(record, holder, path, wanted)

    def _create_block(
        self, record: VolumeRecord, holder: Holder | None, path: Path, wanted: str | None
    ) -> tuple[VolumeSnapshotRecord, tuple[str, ...]]:
        inside = volumesnap.tags(path)
        snap = self._free_name(record, wanted, inside)
        if snap in inside:
            raise ConflictError(
                f"the disk of {_named(record)} already holds an internal snapshot {snap!r} that virtkit "
                "has no record of (made by another tool, or left by an interrupted create)",
                hint=f"choose another name, or remove it: qemu-img snapshot -d {snap} {path}",
            )
        if holder is None or not holder.live:
            size = volumesnap.take_block(path, snap)
            return self._record(record, snap, size, False, lambda: volumesnap.drop_block(path, snap)), ()
        note = self._take_live(record, holder, snap)
        size = os.lstat(path).st_blocks * 512
        return self._record(record, snap, size, True, lambda: self._drop_live(record, holder, snap)), (note,)

    def _take_live(self, volume: VolumeRecord, holder: Holder, snap: str) -> str:
        """Snapshot `snap` of the block volume of a running (or paused) VM, taken by its QEMU, the
        guest's filesystems frozen for it where its agent can (as `snapshot create` does); a note."""
        take = self._snapshotter(volume, holder)
        freeze = getattr(holder.driver, "frozen", None)
        running = holder.state is InstanceState.RUNNING
        frozen = freeze(holder.record, holder.paths) if freeze and running else contextlib.nullcontext("")
        with frozen as said:
            take(holder.record, holder.paths, self._attachment(volume, holder), snap)
        how = f"; {said}" if said else ""
        return f"taken by the QEMU of {holder.record.name} while it ran{how}"

    def _drop_live(self, volume: VolumeRecord, holder: Holder, snap: str) -> None:
        drop = self._snapshotter(volume, holder)
        drop(holder.record, holder.paths, self._attachment(volume, holder), snap, delete=True)

    @staticmethod
    def _snapshotter(volume: VolumeRecord, holder: Holder) -> Callable[..., None]:
        """The holder's driver's way to snapshot a volume it holds (a VM's QEMU does)."""
        found: Callable[..., None] | None = getattr(holder.driver, "snapshot_volume", None)
        if found is None:
            raise StateError(f"{holder.record.name} holds {_named(volume)}, and cannot snapshot it while "
                             "it runs", hint=f"stop it first: virtkit stop {holder.record.name}")  # fmt: skip
        return found

    @staticmethod
    def _attachment(volume: VolumeRecord, holder: Holder) -> VolumeAttachment:
        key = (volume.pool, volume.name)
        found = next((a for a in holder.record.volumes if (a.pool, a.name) == key), None)
        if found is None:
            hint = f"virtkit volume detach {volume.pool} {volume.name} {holder.record.name}"
            raise StateError(f"{holder.record.name} does not list {_named(volume)} as attached", hint=hint)
        return found

    def _create_dir(
        self, record: VolumeRecord, holder: Holder | None, path: Path, wanted: str | None
    ) -> tuple[VolumeSnapshotRecord, tuple[str, ...]]:
        snap = self._free_name(record, wanted, [])
        live = holder is not None and holder.live
        frozen = holder is not None and holder.live and holder.state is InstanceState.RUNNING
        if holder is not None and frozen:
            holder.driver.pause(holder.record, holder.paths)  # no process writes while it is read
            try:
                size = volumesnap.take_dir(path, snap)
            except BaseException:
                _quietly(holder.driver.resume, holder.record, holder.paths)
                raise
            try:
                holder.driver.resume(holder.record, holder.paths)
            except BaseException:
                _quietly(volumesnap.drop_dir, path, snap)
                raise
        else:
            size = volumesnap.take_dir(path, snap)
        notes: tuple[str, ...] = ()
        if holder is not None and live:
            how = "frozen while it was copied" if frozen else "paused"
            notes = (f"taken while {holder.record.name} ran ({how}): consistent as after a power cut",)
        return self._record(record, snap, size, live, lambda: volumesnap.drop_dir(path, snap)), notes

    def _record(
        self, volume: VolumeRecord, name: str, size: int, live: bool, undo: Callable[[], None]
    ) -> VolumeSnapshotRecord:
        taken = self.now()
        snapshot = VolumeSnapshotRecord(
            pool=volume.pool, volume=volume.name, name=name, type=volume.type, size=size, live=live,
            created_at=taken, updated_at=taken,
        )  # fmt: skip
        try:
            made = self.store.create(snapshot)
        except BaseException:
            _quietly(undo)
            raise
        log.info("volume %s/%s: snapshot %s (%s)", volume.pool, volume.name, name, format_size(size))
        return made

    def restore(self, pool: str, volume: str, name: str) -> tuple[VolumeSnapshotRecord, tuple[str, ...]]:
        """Put the volume back to snapshot `name` (what it holds now is lost); the snapshot and notes."""
        snap = validate_name(name, what="snapshot name")
        with self._held(pool, volume) as (record, holder), host_errors(f"restoring {_named(record)}"):
            snapshot = self._get(record, snap)
            if holder is not None and holder.live:
                raise StateError(
                    f"{_named(record)} is attached to {holder.record.name}, which is {holder.state}: "
                    "its data cannot be swapped under it",
                    hint=f"stop it first: virtkit stop {holder.record.name}",
                )
            path = self._path(record)
            lost = StateError(
                f"snapshot {snap} of {_named(record)} has lost its data",
                hint=f"delete it: virtkit volume snapshot delete {record.pool} {record.name} {snap}",
            )
            if record.type is VolumeType.FILESYSTEM:
                if not volumesnap.has_dir(path, snap):
                    raise lost
                volumesnap.restore_dir(path, snap)
                return snapshot, ()
            if snap not in volumesnap.tags(path):
                raise lost
            volumesnap.apply_block(path, snap)
            size = volumes.virtual_size(path)
            if size == record.size:
                return snapshot, ()
            self.store.put(record.model_copy(update={"size": size}))
            return snapshot, (f"its virtual size is back to {format_size(size)}, as when it was snapshotted",)

    def delete(self, pool: str, volume: str, name: str) -> VolumeSnapshotRecord:
        """Delete snapshot `name` of the volume: its data, then its record."""
        snap = validate_name(name, what="snapshot name")
        with self._held(pool, volume) as (record, holder), host_errors(f"deleting snapshot {snap}"):
            snapshot = self._get(record, snap)
            path = self._path(record)
            if record.type is VolumeType.BLOCK:
                if holder is not None and holder.live:
                    if snap in volumesnap.tags(path):  # its QEMU holds the disk: it deletes it
                        self._drop_live(record, holder, snap)
                else:
                    volumesnap.drop_block(path, snap)
            else:
                volumesnap.drop_dir(path, snap)
            self.store.delete(VolumeSnapshotRecord, record.pool, record.name, snap)
        log.info("volume %s/%s: snapshot %s deleted", record.pool, record.name, snap)
        return snapshot

    # --- helpers --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _held(self, pool: str, volume: str) -> Iterator[tuple[VolumeRecord, Holder | None]]:
        """The volume and the instance it is attached to, under that instance's lock (first) and the
        storage lock, as they are while both are held."""
        record = self.storage.volume(pool, volume)
        for _ in range(_TRIES):
            owner = record.attached_to
            with (
                self.store.lock("instance", owner) if owner else contextlib.nullcontext(),
                self.storage.lock(),
            ):
                record = self.storage.volume(record.pool, record.name)
                if record.attached_to == owner:
                    yield record, self._holder(record)
                    return
        raise BusyError(f"{_named(record)} is being attached and detached meanwhile", hint="retry")

    def _holder(self, volume: VolumeRecord) -> Holder | None:
        instance = self.store.find(InstanceRecord, volume.attached_to) if volume.attached_to else None
        if instance is None:  # attached to nothing, or to an instance that is gone
            return None
        driver, paths = self.drivers(instance.kind), InstancePaths.of(self.root, instance.name)
        status = driver.status(instance, paths)
        live = status.pid is not None or status.state in LIVE
        return Holder(instance, driver, paths, status.state, live)

    def _path(self, volume: VolumeRecord) -> Path:
        """The volume's file or directory, its pool checked to be there (mounted, marked)."""
        pool = self.store.get(PoolRecord, volume.pool)
        pools.check_healthy(pool.path, pool.name)
        return volumes.volume_path(pool.path, volume.name, volume.type)

    def _free_name(self, volume: VolumeRecord, name: str | None, inside: Collection[str]) -> str:
        """`name`, refused if the volume has a snapshot by that name; else the next snapN (past any
        name its disk already holds)."""
        taken = {s.name for s in self.store.list(VolumeSnapshotRecord, pool=volume.pool, volume=volume.name)}
        if name is None:
            numbers = [int(match[1]) for n in taken if (match := _DEFAULT.fullmatch(n))]
            number = max(numbers, default=-1) + 1
            while f"snap{number}" in taken or f"snap{number}" in inside:
                number += 1
            return f"snap{number}"
        if name in taken:
            raise ConflictError(
                f"snapshot {name!r} of {_named(volume)} already exists",
                hint=f"pick another name, or delete it first: virtkit volume snapshot delete "
                f"{volume.pool} {volume.name} {name}",
            )
        return name


def _quietly(step: Callable[..., object], *args: object) -> None:
    """An undo step: its failure is logged, not raised (the first error is the one to report)."""
    try:
        step(*args)
    except (VirtkitError, ToolError, OSError) as exc:
        log.error("undoing a volume snapshot step failed: %s", exc)
