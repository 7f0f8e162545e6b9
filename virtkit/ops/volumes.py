"""`virtkit volume attach|detach POOL VOLUME INSTANCE [PATH]`: give an instance a volume, or take it back.

What goes where (as in Incus, whose custom volumes these are):

- a filesystem volume on a container: a bind mount of its directory at PATH inside, shown in the
  container's ids (drivers/oci/mounts.py). A stopped container gets it at its next start; a
  running (or paused) one at once, in its mount namespace (drivers/oci/mountns.py).
- a block volume on a VM: a virtio disk. The attachment is recorded on a stopped VM for its next
  start; a running q35 VM gets it hot-plugged at once (QMP, on one of its volume root ports); a
  running microvm, arm `virt` or emulated-device VM is refused by its driver: stop it first.
- a block volume on a container, a filesystem volume on a VM (virtiofs): refused.

An attachment lives in the instance's record (`InstanceRecord.volumes`: all its driver needs) and
in the volume's (`attached_to`: the volume is in use); the instance's runtime is made again with
it (as `virtkit set` does), so its next start has it. Steps: the instance's lock, then the storage
lock (for the volume's record); a refused or failed attach or detach leaves both records, the
saved runtime and the instance as they were. Deleting an instance detaches its volumes (their
data stays): Lifecycle calls Storage.release_all.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.drivers.base import InstancePaths, Runtime, get_driver
from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError
from virtkit.model import (
    InstanceKind,
    InstanceRecord,
    InstanceState,
    VolumeAttachment,
    VolumeRecord,
    VolumeType,
    validate_name,
)
from virtkit.ops.lifecycle import DriverFor, Lifecycle
from virtkit.ops.storage import Storage
from virtkit.storage import limits as io_limits
from virtkit.storage.pools import within
from virtkit.store import Store, atomic_write

log = logging.getLogger(__name__)

LIVE = (InstanceState.RUNNING, InstanceState.PAUSED)
MAX_VOLUMES = 32
MAX_PATH = 1024
# Kernel filesystems runc mounts itself: a volume there would hide or shadow them.
FORBIDDEN = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class Attached:
    """What an attach or detach did: the attachment, and whether the running instance has it now."""

    instance: str
    volume: VolumeAttachment
    live: bool
    notices: list[str] = field(default_factory=list)


def mount_path(text: str | None) -> str:
    """A container's volume path as typed, checked and normalised (repeated and trailing '/' gone)."""
    if not text:
        raise SpecError(
            "a volume attached to a container needs a path inside it", hint="e.g. --path /mnt/data"
        )
    if not text.isprintable() or len(text) > MAX_PATH:
        raise SpecError(f"invalid volume path {text[:80]!r}: control characters, or over {MAX_PATH} long")
    if not text.startswith("/"):
        raise SpecError(
            f"invalid volume path {text!r}: it must be absolute", hint=f"e.g. /{text.lstrip('./')}"
        )
    parts = [part for part in text.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise SpecError(
            f"invalid volume path {text!r}: it must not hold '.' or '..'", hint="give the plain path"
        )
    if not parts:
        raise SpecError(
            "a volume cannot be mounted over the container's root (/)", hint="e.g. --path /mnt/data"
        )
    path = "/" + "/".join(parts)
    for top in FORBIDDEN:
        if within(path, top):
            raise SpecError(
                f"invalid volume path {path}: {top} is the kernel's, mounted by the runtime",
                hint="choose a path such as /mnt/data or /srv/data",
            )
    return path


def _named(volume: VolumeRecord) -> str:
    return f"volume {volume.name!r} of pool {volume.pool!r}"


def _container_path(record: InstanceRecord, volume: VolumeRecord, path: str | None) -> str:
    """Where a container would mount `volume`: a filesystem volume, at a path no other volume holds."""
    if volume.type is VolumeType.BLOCK:
        raise SpecError(
            f"{_named(volume)} is a block volume (a disk, for VMs): a container mounts filesystem volumes",
            hint=f"make one: virtkit volume create {volume.pool} NAME --type filesystem",
        )
    path = mount_path(path)
    for other in record.volumes:
        if other.path and (within(path, other.path) or within(other.path, path)):
            raise ConflictError(
                f"{path} in {record.name} overlaps volume {other.pool}/{other.name} at {other.path}",
                hint="volumes cannot be mounted one inside another: choose another path",
            )
    return path


def _check_vm(volume: VolumeRecord, path: str | None) -> None:
    if volume.type is VolumeType.FILESYSTEM:
        raise SpecError(
            f"{_named(volume)} is a filesystem volume: a VM takes block volumes (no virtiofs yet)",
            hint=f"make one: virtkit volume create {volume.pool} NAME --size 10GiB",
        )
    if path is not None:
        raise SpecError("a VM sees a block volume as a disk: it takes no path", hint="leave --path out")


class Volumes:
    """The attach and detach verbs over one state root."""

    def __init__(self, root: Path, store: Store, drivers: DriverFor = get_driver) -> None:
        self.life = Lifecycle(root, store, drivers)
        self.storage = Storage(root, store)
        self.store = store

    def attach(self, pool: str, name: str, instance: str, path: str | None = None) -> Attached:
        volume = self.storage.volume(pool, name)
        record = self.store.get(InstanceRecord, validate_name(instance))
        with self.store.lock("instance", record.name):
            record = self.store.get(InstanceRecord, record.name)
            volume = self.storage.volume(volume.pool, volume.name)  # as it is now (claim checks again)
            driver, paths = self.life.drivers(record.kind), self.life.paths(record.name)
            live = driver.status(record, paths).state in LIVE
            attachment = self._attachment(record, volume, path)
            # can its next start have it (and, running, can it be plugged now)? refused before any change
            driver.attach_volume(record, paths, attachment, live=False)
            before = paths.runtime.read_bytes()  # put back as it was should the attach fail
            self.storage.claim(volume.pool, volume.name, record.name)
            try:
                new, runtime = self._regenerate(record, [*record.volumes, attachment])
                self._commit(new, runtime, paths)
                if live:
                    driver.attach_volume(new, paths, attachment, live=True)
            except BaseException:
                atomic_write(paths.runtime, before)
                self.store.put(record)
                self.storage.release(volume.pool, volume.name, record.name)
                raise
        log.info("%s: volume %s/%s attached as %s", record.name, volume.pool, volume.name, attachment.device)
        return Attached(record.name, attachment, live, self._notices(new, runtime, attachment))

    def detach(self, pool: str, name: str, instance: str) -> Attached:
        volume = self.storage.volume(pool, name)
        found = self.store.find(InstanceRecord, validate_name(instance))
        if found is None:
            return self._forget(volume, instance)
        with self.store.lock("instance", found.name):
            record = self.store.get(InstanceRecord, found.name)
            volume = self.storage.volume(volume.pool, volume.name)
            held = [a for a in record.volumes if (a.pool, a.name) == (volume.pool, volume.name)]
            if not held:
                elsewhere = f" (it is attached to {volume.attached_to})" if volume.attached_to else ""
                raise StateError(f"volume {volume.name!r} of pool {volume.pool!r} is not attached to "
                                 f"{record.name}{elsewhere}")  # fmt: skip
            driver, paths = self.life.drivers(record.kind), self.life.paths(record.name)
            live = driver.status(record, paths).state in LIVE
            # made before the volume goes, so that nothing after its unmounting can fail but the writes
            new, runtime = self._regenerate(record, [a for a in record.volumes if a is not held[0]])
            if live:
                driver.detach_volume(record, paths, held[0])
            self._commit(new, runtime, paths)
            if volume.attached_to == record.name:
                self.storage.release(volume.pool, volume.name, record.name)
        log.info("%s: volume %s/%s detached", record.name, volume.pool, volume.name)
        return Attached(record.name, held[0], live)

    def _forget(self, volume: VolumeRecord, instance: str) -> Attached:
        """Detach from an instance that is gone: the volume's record only (what an interrupted
        delete could leave), else NotFoundError."""
        if volume.attached_to != instance:
            raise NotFoundError(f"instance {instance!r} not found")
        self.storage.release(volume.pool, volume.name, instance)
        gone = VolumeAttachment(
            pool=volume.pool, name=volume.name, type=volume.type, format=volume.format,
            source=str(self.storage.path_of(volume)), device="vol0",
        )  # fmt: skip
        return Attached(
            instance, gone, False, [f"instance {instance} no longer exists: only the volume's record said so"]
        )

    def _attachment(self, record: InstanceRecord, volume: VolumeRecord, path: str | None) -> VolumeAttachment:
        """The attachment `volume` would be in `record`, checked (types, path, free slot); no change."""
        if volume.attached_to is not None:
            hint = f"detach it first: virtkit volume detach {volume.pool} {volume.name} {volume.attached_to}"
            raise StateError(f"{_named(volume)} is already attached to {volume.attached_to}", hint=hint)
        if record.kind is InstanceKind.CONTAINER:
            path = _container_path(record, volume, path)
        else:
            _check_vm(volume, path)
        used = {a.device for a in record.volumes}
        device = next((f"vol{i}" for i in range(MAX_VOLUMES) if f"vol{i}" not in used), None)
        if device is None:
            raise SpecError(f"{record.name} has {MAX_VOLUMES} volumes already: an instance has at most that")
        return VolumeAttachment(
            pool=volume.pool, name=volume.name, type=volume.type, format=volume.format,
            source=str(self.storage.path_of(volume)), device=device, path=path,
            limits=io_limits.limits_of(volume.config),
        )  # fmt: skip

    def _regenerate(
        self, record: InstanceRecord, attached: list[VolumeAttachment]
    ) -> tuple[InstanceRecord, Runtime]:
        """The record with `attached` and its runtime made again from it; no change."""
        from virtkit.ops.images import image_store

        new = InstanceRecord.model_validate(record.model_copy(update={"volumes": attached}).model_dump())
        images = image_store(self.life.root, self.store)
        image = images.resolve(new.image or "")
        paths = self.life.paths(new.name)
        return new, self.life.drivers(new.kind).generate(new, image, images.path(image), paths)

    def _commit(self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths) -> None:
        """Save the runtime beside the instance, then the record: the next start uses both."""
        atomic_write(paths.runtime, json.dumps(runtime.to_dict(), indent=2))
        self.store.put(record)

    @staticmethod
    def _notices(record: InstanceRecord, runtime: Runtime, attachment: VolumeAttachment) -> list[str]:
        """Say when the VM's runtime does not use the volume: this QEMU driver cannot attach it yet."""
        if record.kind is not InstanceKind.VM or f"vk-{attachment.device}" in json.dumps(runtime.to_dict()):
            return []
        return [
            f"the attachment is recorded, but this virtkit's VM driver does not give volumes to QEMU yet: "
            f"{record.name} will start without it"
        ]
