"""Storage pools and volumes: create, list, show, resize, set limits on and delete them.

A pool is a record in the store and a directory (storage/pools.py); a volume is a record and a
qcow2 disk or a directory in its pool (storage/volumes.py). The pool `default` lives at
ROOT/pools/default and is made by the first storage operation on a state root, as libvirt's and
Incus's default pools are there from the start; it cannot be deleted.

Every change holds the `host/storage` lock: checks (does the name exist, is the path free), the
files and the record change together, and a failure undoes the files before the lock is let go.
Attaching (ops/volumes.py) takes an instance's lock first, then this one, never the other way
round — the order networks use. `claim` and `release` are what attaching calls to mark a volume in
use; `release_all` is what deleting an instance calls (its volumes outlive it, detached).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import ConflictError, SpecError, StateError, StoreError
from virtkit.model import (
    InstanceRecord,
    PoolRecord,
    VolumeAttachment,
    VolumeRecord,
    VolumeSnapshotRecord,
    VolumeType,
    format_size,
    parse_size,
    validate_name,
)
from virtkit.storage import limits as io_limits
from virtkit.storage import pools, volumes, volumesnap
from virtkit.store import Store

log = logging.getLogger(__name__)

LOCK = ("host", "storage")
DEFAULT_POOL = "default"
DRIVERS = ("dir",)
DEFAULT_VOLUME_SIZE = "10GiB"  # as Incus's volume.size default; a qcow2 is sparse


@dataclass(frozen=True)
class PoolView:
    record: PoolRecord
    healthy: bool
    capacity: pools.Capacity | None
    volumes: list[VolumeRecord] = field(default_factory=list)

    @property
    def allocated(self) -> int:
        """The sum of the volumes' sizes: what the pool has promised (qcow2 disks are thin)."""
        return sum(v.size for v in self.volumes)

    def to_dict(self) -> dict[str, object]:
        data = self.record.model_dump(mode="json")
        data["state"] = "ok" if self.healthy else "unavailable"
        data["total"] = self.capacity.total if self.capacity else None
        data["free"] = self.capacity.free if self.capacity else None
        data["allocated"] = self.allocated
        data["volumes"] = [v.name for v in self.volumes]
        return data


@dataclass(frozen=True)
class VolumeView:
    record: VolumeRecord
    path: Path
    usage: int | None
    attachment: VolumeAttachment | None = None  # as the instance it is attached to holds it
    snapshots: int = 0  # how many it has (virtkit volume snapshot list)

    def to_dict(self) -> dict[str, object]:
        data = self.record.model_dump(mode="json")
        data["path"] = str(self.path)
        data["usage"] = self.usage
        data["snapshots"] = self.snapshots
        data["limits"] = io_limits.limits_of(self.record.config)
        data["attached_path"] = self.attachment.path if self.attachment else None
        data["attached_device"] = self.attachment.device if self.attachment else None
        return data


def volume_type(text: str) -> VolumeType:
    try:
        return VolumeType(text)
    except ValueError:
        raise SpecError(
            f"invalid volume type {text!r}",
            hint="block: a qcow2 disk for VMs; filesystem: a directory for containers",
        ) from None


def volume_size(text: str | int) -> int:
    return parse_size(
        text, what="volume size", minimum=volumes.MIN_VOLUME_SIZE, maximum=volumes.MAX_VOLUME_SIZE
    )


class Storage:
    """The storage verbs over one state root."""

    def __init__(self, root: Path, store: Store) -> None:
        self._root = root
        self.store = store

    @property
    def root(self) -> str:
        """The state root's real path: pool paths are compared with it as the kernel resolves them."""
        return os.path.realpath(self._root)

    def lock(self) -> AbstractContextManager[None]:
        return self.store.lock(*LOCK)

    # --- pools ----------------------------------------------------------------------------------

    def ensure_default(self) -> PoolRecord:
        """The pool `default` (ROOT/pools/default), made when this root has none yet."""
        record = self.store.find(PoolRecord, DEFAULT_POOL)
        if record is not None:
            return record
        with self.lock():
            record = self.store.find(PoolRecord, DEFAULT_POOL)  # made meanwhile by another process?
            if record is not None:
                return record
            parent = os.path.join(self.root, pools.POOLS_DIR)
            path = os.path.join(parent, DEFAULT_POOL)
            try:
                os.makedirs(parent, mode=pools.POOL_MODE, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot make {parent}: {exc.strerror or exc}") from exc
            exists = os.path.isdir(path) and not os.path.islink(path)
            marker = pools.read_marker(path) if exists else None
            if marker is None or marker.get("pool") != DEFAULT_POOL:
                if exists:  # an empty leftover is taken; anything else is not ours to reuse
                    pools.check_path(path, root=self.root, others={})
                pools.make(path, exists=exists, pool=DEFAULT_POOL, root=self.root)
            # Should this fail, the marked directory stays: it is the default pool's reserved place,
            # taken back as it is by the next call.
            record = self.store.create(PoolRecord(name=DEFAULT_POOL, path=path, owned=True))
        log.info("made the default storage pool at %s", path)
        return record

    def pool(self, name: str) -> PoolRecord:
        self.ensure_default()
        return self.store.get(PoolRecord, validate_name(name, what="pool name"))

    def pool_view(self, name: str) -> PoolView:
        return self._view(self.pool(name))

    def pool_views(self) -> list[PoolView]:
        self.ensure_default()
        return [self._view(record) for record in self.store.list(PoolRecord)]

    def _view(self, record: PoolRecord) -> PoolView:
        marker = pools.read_marker(record.path)
        healthy = marker is not None and marker.get("pool") == record.name
        return PoolView(
            record, healthy, pools.capacity(record.path) if healthy else None,
            self.store.list(VolumeRecord, pool=record.name),
        )  # fmt: skip

    def create_pool(self, name: str, *, driver: str = "dir", path: str | None = None) -> PoolRecord:
        """Define pool `name` on directory `path` (default ROOT/pools/NAME), made empty or new;
        a failure leaves neither record nor directory."""
        name = validate_name(name, what="pool name")
        if driver not in DRIVERS:
            raise SpecError(f"unknown pool driver {driver!r}", hint=f"available: {', '.join(DRIVERS)}")
        wanted = pools.normal_path(path) if path is not None else None
        self.ensure_default()
        with self.lock():
            if self.store.find(PoolRecord, name) is not None:
                raise ConflictError(f"pool {name!r} already exists", hint="choose another name")
            chosen = wanted or os.path.join(self.root, pools.POOLS_DIR, name)
            others = {r.name: r.path for r in self.store.list(PoolRecord)}
            exists = pools.check_path(chosen, root=self.root, others=others)
            pools.make(chosen, exists=exists, pool=name, root=self.root)
            try:
                record = self.store.create(
                    PoolRecord(name=name, driver=driver, path=chosen, owned=not exists)
                )
            except BaseException:
                pools.remove(chosen, owned=not exists, pool=name)
                raise
        log.info("pool %s: %s at %s", name, driver, chosen)
        return record

    def delete_pool(self, name: str) -> list[str]:
        """Forget an empty pool and take its layout out of its directory; what was kept, and why."""
        record = self.pool(name)
        if record.name == DEFAULT_POOL:
            raise StateError(
                "the default pool cannot be deleted", hint="it is where volumes go unless told otherwise"
            )
        with self.lock():
            held = [v.name for v in self.store.list(VolumeRecord, pool=record.name)]
            if held:
                shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
                raise StateError(
                    f"pool {record.name!r} holds {len(held)} volume(s): {shown}",
                    hint=f"delete them first: virtkit volume delete {record.name} {held[0]}",
                )
            self.store.delete(PoolRecord, record.name)
            kept = pools.remove(record.path, owned=record.owned, pool=record.name)
        if not record.owned:
            kept.append(f"{record.path} was there before the pool: kept")
        return kept

    # --- volumes --------------------------------------------------------------------------------

    def volume(self, pool: str, name: str) -> VolumeRecord:
        record = self.pool(pool)
        return self.store.get(VolumeRecord, record.name, validate_name(name, what="volume name"))

    def path_of(self, volume: VolumeRecord) -> Path:
        return volumes.volume_path(self.store.get(PoolRecord, volume.pool).path, volume.name, volume.type)

    def volume_view(self, pool: str, name: str) -> VolumeView:
        record = self.volume(pool, name)
        path = self.path_of(record)
        taken = len(self.store.list(VolumeSnapshotRecord, pool=record.pool, volume=record.name))
        return VolumeView(record, path, volumes.usage(path), self.attachment_of(record), taken)

    def attachment_of(self, volume: VolumeRecord) -> VolumeAttachment | None:
        """How the instance the volume is attached to holds it (None: attached to nothing)."""
        instance = self.store.find(InstanceRecord, volume.attached_to) if volume.attached_to else None
        held = instance.volumes if instance is not None else []
        return next((a for a in held if (a.pool, a.name) == (volume.pool, volume.name)), None)

    def volume_records(self, pool: str | None = None) -> list[VolumeRecord]:
        if pool is None:
            self.ensure_default()
            return self.store.list(VolumeRecord)
        return self.store.list(VolumeRecord, pool=self.pool(pool).name)

    def create_volume(
        self, pool: str, name: str, *, size: str | int = DEFAULT_VOLUME_SIZE, type: str = "block",
        limits: Mapping[str, str] | None = None,
    ) -> VolumeRecord:  # fmt: skip
        """Make volume `name` in `pool`: a qcow2 disk (block) or a directory (filesystem); a failure
        leaves neither file nor record."""
        name = validate_name(name, what="volume name")
        kind = volume_type(type)
        wanted = volume_size(size)
        config = self._limits(
            kind, {key: io_limits.parse_value(key, value) for key, value in (limits or {}).items()}
        )
        with self.lock():
            record = self.pool(pool)
            if self.store.find(VolumeRecord, record.name, name) is not None:
                raise ConflictError(
                    f"volume {name!r} already exists in pool {record.name!r}", hint="choose another name"
                )
            pools.check_healthy(record.path, record.name)
            path = volumes.volume_path(record.path, name, kind)
            volumes.clean_stale(path.parent)
            if kind is VolumeType.BLOCK:
                made = volumes.create_block(path, wanted)
            else:
                volumes.create_filesystem(path)
                made = wanted
            fmt = "qcow2" if kind is VolumeType.BLOCK else "dir"
            volume = VolumeRecord(
                pool=record.name, name=name, size=made, type=kind, format=fmt, config=config
            )
            try:
                volume = self.store.create(volume)
            except BaseException:
                volumes.purge(volumes.retire(path))
                raise
        log.info("volume %s/%s: %s, %s", record.name, name, kind, format_size(made))
        return volume

    def adopt_volume(self, pool: str, name: str, disk: Path) -> VolumeRecord:
        """Make block volume `name` in `pool` of the qcow2 file `disk` (an imported disk, already
        checked), moved into the pool; a failure leaves neither volume file nor record."""
        name = validate_name(name, what="volume name")
        with self.lock():
            record = self.pool(pool)
            if self.store.find(VolumeRecord, record.name, name) is not None:
                raise ConflictError(
                    f"volume {name!r} already exists in pool {record.name!r}", hint="choose another name"
                )
            pools.check_healthy(record.path, record.name)
            path = volumes.volume_path(record.path, name, VolumeType.BLOCK)
            volumes.clean_stale(path.parent)
            made = volumes.adopt_block(path, disk)
            volume = VolumeRecord(
                pool=record.name, name=name, size=made, type=VolumeType.BLOCK, format="qcow2"
            )
            try:
                volume = self.store.create(volume)
            except BaseException:
                volumes.purge(volumes.retire(path))
                raise
        log.info("volume %s/%s: imported, %s", record.name, name, format_size(made))
        return volume

    def resize_volume(self, pool: str, name: str, size: str | int, *, force: bool = False) -> VolumeRecord:
        """Grow a volume; shrink a block volume only with `force` (data past the new end is lost)."""
        wanted = volumes.round_size(volume_size(size))
        with self.lock():
            volume = self._usable(pool, name, "resized")
            if wanted == volume.size:
                return volume
            shrink = wanted < volume.size
            if shrink and volume.type is VolumeType.FILESYSTEM:
                raise SpecError(
                    f"volume {volume.name!r} is a filesystem volume: it cannot shrink",
                    hint="copy what it holds into a new, smaller volume instead",
                )
            if shrink and not force:
                raise SpecError(
                    f"shrinking volume {volume.name!r} from {format_size(volume.size)} to "
                    f"{format_size(wanted)} cuts off whatever lies past the new end",
                    hint="shrink the guest's filesystem and partition first, then pass --force",
                )
            old = volume.size
            path = self.path_of(volume)
            made = (
                wanted
                if volume.type is VolumeType.FILESYSTEM
                else volumes.resize_block(path, wanted, shrink=shrink)
            )
            try:
                return self.store.put(volume.model_copy(update={"size": made}))
            except BaseException:
                if volume.type is VolumeType.BLOCK and not shrink:  # growing is undone losslessly
                    volumes.resize_block(path, old, shrink=True)
                raise

    def set_limits(self, pool: str, name: str, values: Mapping[str, str]) -> VolumeRecord:
        """Set IO limits (`limits.*` keys, already parsed) of a volume; applied at its next attach."""
        with self.lock():
            volume = self.volume(pool, name)
            config = self._limits(volume.type, {**volume.config, **values})
            return self.store.put(volume.model_copy(update={"config": config}))

    def unset_limits(self, pool: str, name: str, keys: list[str]) -> VolumeRecord:
        unknown = [key for key in keys if key not in io_limits.KEYS]
        if unknown or not keys:
            raise SpecError(
                f"unknown volume setting {unknown[0]!r}" if unknown else "nothing to unset",
                hint=f"volume settings are {io_limits.known_keys()}",
            )
        with self.lock():
            volume = self.volume(pool, name)
            config = {k: v for k, v in volume.config.items() if k not in keys}
            return self.store.put(volume.model_copy(update={"config": config}))

    def delete_volume(self, pool: str, name: str) -> None:
        """Delete a volume no instance uses and its snapshots: its file or directory (and its
        snapshots' copies) renamed out of sight, the records deleted, then the data removed."""
        with self.lock():
            volume = self._usable(pool, name, "deleted")
            path = self.path_of(volume)
            hidden = volumes.retire(path)
            copies = volumesnap.retire_home(path) if volume.type is VolumeType.FILESYSTEM else None
            try:
                with self.store.transaction():
                    taken = self.store.list(VolumeSnapshotRecord, pool=volume.pool, volume=volume.name)
                    for snapshot in taken:
                        self.store.delete(VolumeSnapshotRecord, *snapshot.key())
                    self.store.delete(VolumeRecord, volume.pool, volume.name)
            except BaseException:
                volumes.restore(hidden, path)
                volumes.restore(copies, volumesnap.home(path))
                raise
            volumes.purge(hidden)
            volumes.purge(copies)

    def claim(self, pool: str, name: str, instance: str) -> VolumeRecord:
        """Mark a volume as attached to `instance` (what attaching calls, holding its lock)."""
        with self.lock():
            volume = self._usable(pool, name, "attached")
            if volume.type is VolumeType.FILESYSTEM:
                pools.seal_filesystem(self.store.get(PoolRecord, volume.pool).path)
            return self.store.put(volume.model_copy(update={"attached_to": validate_name(instance)}))

    def release(self, pool: str, name: str, instance: str) -> VolumeRecord:
        """Mark a volume as no longer attached to `instance`."""
        with self.lock():
            volume = self.volume(pool, name)
            if volume.attached_to != instance:
                raise StateError(
                    f"volume {volume.name!r} in pool {volume.pool!r} is not attached to {instance}"
                )
            return self.store.put(volume.model_copy(update={"attached_to": None}))

    def release_all(self, instance: str) -> list[VolumeRecord]:
        """Mark every volume attached to `instance` as attached to nothing (the instance is deleted:
        its volumes and their data stay); the volumes released."""
        with self.lock():
            held = [v for v in self.store.list(VolumeRecord) if v.attached_to == instance]
            for volume in held:
                self.store.put(volume.model_copy(update={"attached_to": None}))
        if held:
            log.info("%s: volumes %s detached", instance, ", ".join(f"{v.pool}/{v.name}" for v in held))
        return held

    def _usable(self, pool: str, name: str, verb: str) -> VolumeRecord:
        """The volume, when it is attached to nothing and its pool's directory is there."""
        volume = self.volume(pool, name)
        if volume.attached_to is not None:
            raise StateError(
                f"volume {volume.name!r} in pool {volume.pool!r} is attached to {volume.attached_to}: "
                f"it cannot be {verb}",
                hint=f"detach it from {volume.attached_to} first",
            )
        pools.check_healthy(self.store.get(PoolRecord, volume.pool).path, volume.pool)
        return volume

    @staticmethod
    def _limits(kind: VolumeType, config: dict[str, str]) -> dict[str, str]:
        if kind is VolumeType.FILESYSTEM and io_limits.limits_of(config):
            raise SpecError(
                "IO limits apply to block volumes only",
                hint="a filesystem volume shares its filesystem's device: limit the container's disk IO",
            )
        io_limits.check(config)
        return config
