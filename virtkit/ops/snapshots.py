"""Snapshots of instances: create, list, show, restore, delete (design: docs/snapshots.md).

A snapshot is a record in the store (SnapshotRecord, deleted with its instance) and its data: for
a VM, qcow2 internal snapshots of the disks it owns plus copies of its small files; for a
container, a copy of its writable layer (storage/vmsnap.py, storage/containersnap.py). The data
lives under the instance's directory, so deleting the instance deletes it too.

Every verb holds the instance's lock, as the lifecycle verbs do, and reads the live state from
the driver. Create makes the data under a temporary name, renames it into place and only then
stores the record: a failure at any step removes what was made, and a crash leaves data without a
record, which the next create of that name removes. Restore checks the snapshot's data is all
there before it touches the instance; a running (or paused) instance is stopped at once (what it
holds now is being thrown away), restored, and started again — also when restoring fails, so a
failed restore leaves it as it was.

A stateful snapshot (a running VM's memory and device state too) is restored without a reboot:
into the running QEMU when the VM runs and has no copied files (snapshot-load; QEMU's open files
could not be swapped under it), else the VM is stopped, its disks and files restored, QEMU
started with its vCPUs stopped (-S), the state loaded and the vCPUs let go. If loading fails the
guest's state is lost: the VM is stopped and the error says so.

The clock (`now`) is injectable: created_at and expires_at are read from it, and the scheduler
(ops/prune.py) runs on it in tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from virtkit.drivers.base import Driver, InstancePaths, Runtime, get_driver
from virtkit.errors import ConflictError, StateError, StoreError, VirtkitError, host_errors
from virtkit.model import InstanceKind, InstanceRecord, InstanceState, SnapshotRecord, validate_name
from virtkit.ops.lifecycle import READY_TIMEOUT, DriverFor, Lifecycle
from virtkit.storage.archive import remove_tree
from virtkit.storage.containersnap import NO_STATE, NO_STATE_HINT
from virtkit.storage.snapshots import Backend, Captured, snapshot_dir, snapshots_dir, stage, sweep
from virtkit.store import Store

log = logging.getLogger(__name__)

BackendFor = Callable[[InstanceRecord, InstancePaths, bool], Backend]  # (instance, paths, live)
Clock = Callable[[], float]  # seconds since the epoch

QMP_TIMEOUT = 120.0  # an internal snapshot of a big, much-written disk
_DEFAULT = re.compile(r"snap([0-9]{1,9})")


@dataclass(frozen=True)
class SnapshotView:
    """A snapshot's record, its instance's kind and where its copied files are."""

    record: SnapshotRecord
    kind: InstanceKind
    path: Path

    def to_dict(self) -> dict[str, object]:
        data = self.record.model_dump(mode="json")
        data["kind"] = self.kind.value
        data["path"] = str(self.path)
        return data


@dataclass(frozen=True)
class Restored:
    """What `restore` did: the snapshot, the instance's state before, whether it was restarted, and
    whether it resumed from the snapshot's moment (a stateful one) rather than booted afresh."""

    snapshot: SnapshotRecord
    was: InstanceState
    restarted: bool
    resumed: bool = False


def _captured(snapshot: SnapshotRecord) -> Captured:
    return Captured(tuple(snapshot.disks), tuple(snapshot.files), snapshot.size, stateful=snapshot.stateful)


class _PausedStart(Lifecycle):
    """Lifecycle whose start leaves QEMU's vCPUs stopped (-S, appended to the saved command line for
    this start only), so that a stateful snapshot is loaded before the guest runs at all."""

    def _load_runtime(self, record: InstanceRecord) -> Runtime:
        runtime = super()._load_runtime(record)
        return replace(runtime, argv=[*runtime.argv, "-S"])


class Snapshots:
    """The snapshot verbs over one state root."""

    def __init__(
        self, root: Path, store: Store, drivers: DriverFor = get_driver, backends: BackendFor | None = None,
        now: Clock = time.time,
    ) -> None:  # fmt: skip
        self.root = root
        self.store = store
        self.drivers = drivers
        self.backends = backends or backend_for
        self.now = now

    def paths(self, name: str) -> InstancePaths:
        return InstancePaths.of(self.root, name)

    # --- reading --------------------------------------------------------------------------------

    def list(self, instance: str) -> list[SnapshotRecord]:
        """The instance's snapshots, oldest first."""
        record = self.store.get(InstanceRecord, validate_name(instance))
        found = self.store.list(SnapshotRecord, instance=record.name)
        return sorted(found, key=lambda snapshot: (snapshot.created_at, snapshot.name))

    def get(self, instance: str, name: str) -> SnapshotRecord:
        """One snapshot; NotFoundError names the instance or the snapshot that is missing."""
        record = self.store.get(InstanceRecord, validate_name(instance))
        return self.store.get(SnapshotRecord, record.name, validate_name(name, what="snapshot name"))

    def view(self, instance: str, name: str) -> SnapshotView:
        snapshot = self.get(instance, name)
        kind = self.store.get(InstanceRecord, snapshot.instance).kind
        return SnapshotView(snapshot, kind, snapshot_dir(self.paths(snapshot.instance).dir, snapshot.name))

    # --- changing -------------------------------------------------------------------------------

    def create(
        self, instance: str, name: str | None = None, *, stateful: bool = False, expiry: float | None = None,
        scheduled: bool = False,
    ) -> tuple[SnapshotRecord, tuple[str, ...]]:  # fmt: skip
        """Take a snapshot (named snapN, the next number, when `name` is None); the record and the
        notes to show (e.g. that a running VM's snapshot is disk-only). `stateful`: a running VM's
        memory and device state too; `expiry`: seconds after which `prune` deletes it;
        `scheduled`: made by the instance's schedule."""
        wanted = validate_name(instance)
        snap = validate_name(name, what="snapshot name") if name is not None else None
        with self.store.lock("instance", wanted), host_errors(f"snapshotting {wanted}"):
            record = self.store.get(InstanceRecord, wanted)
            snap = self._free_name(record.name, snap)
            driver, paths = self.drivers(record.kind), self.paths(record.name)
            status = driver.status(record, paths)
            live = status.pid is not None
            if stateful:
                _check_stateful(record, live)
            backend = self.backends(record, paths, live)
            staged = self._prepare(backend, paths, snap)
            captured: Captured | None = None
            try:
                frozen = backend.freeze and status.state is InstanceState.RUNNING and not stateful
                # a running VM's guest filesystems frozen by its agent where it can (disk-only)
                running = status.state is InstanceState.RUNNING
                freeze = getattr(driver, "frozen", None) if running and not stateful and not frozen else None
                with freeze(record, paths) if freeze is not None else contextlib.nullcontext("") as note:
                    captured = self._capture(driver, record, paths, backend, snap, staged, frozen=frozen,
                                             stateful=stateful)  # fmt: skip
                taken = self.now()
                snapshot = SnapshotRecord(
                    instance=record.name, name=snap, size=captured.size, disks=list(captured.disks),
                    files=list(captured.files), live=live, stateful=captured.stateful, scheduled=scheduled,
                    created_at=taken, updated_at=taken, expires_at=None if expiry is None else taken + expiry,
                )  # fmt: skip
                final = snapshot_dir(paths.dir, snap)
                os.rename(staged, final)
                staged = final
                return self.store.create(snapshot), _with_freeze(captured.notes, note)
            except BaseException:
                if captured is not None:
                    _quietly(backend.remove, snap, captured)
                remove_tree(staged)
                raise

    def check_create(
        self, instance: str, name: str | None = None, *, stateful: bool = False
    ) -> InstanceRecord:
        """What `create` would refuse before it makes anything, raised now, without a lock (for
        callers that answer before the work runs, as the API does; `create` checks again): bad
        names, an unknown instance, a taken snapshot name, a stateful snapshot not possible now."""
        record = self.store.get(InstanceRecord, validate_name(instance))
        if name is not None:
            self._free_name(record.name, validate_name(name, what="snapshot name"))
        if stateful:
            live = self.drivers(record.kind).status(record, self.paths(record.name)).pid is not None
            _check_stateful(record, live)
        return record

    def _free_name(self, instance: str, name: str | None) -> str:
        """`name`, refused if the instance has a snapshot by that name; else the next snapN."""
        if name is None:
            return self._next_name(instance)
        if self.store.find(SnapshotRecord, instance, name) is not None:
            raise ConflictError(
                f"snapshot {name!r} of instance {instance!r} already exists",
                hint=f"pick another name, or delete it first: virtkit snapshot delete {instance} {name}",
            )
        return name

    def _prepare(self, backend: Backend, paths: InstancePaths, snap: str) -> Path:
        """Clear what a crashed create left of `snap` (it has no record); its staging directory."""
        home = snapshots_dir(paths.dir)
        sweep(home)
        leftover = snapshot_dir(paths.dir, snap)
        if os.path.lexists(leftover):
            log.warning("removing %s, left by an interrupted snapshot create", leftover)
            remove_tree(leftover)
        backend.forget(snap)
        return stage(home, snap)

    @staticmethod
    def _capture(
        driver: Driver, record: InstanceRecord, paths: InstancePaths, backend: Backend, snap: str,
        staged: Path, *, frozen: bool, stateful: bool = False,
    ) -> Captured:  # fmt: skip
        if stateful:
            return backend.capture_state(snap, staged)
        if not frozen:
            return backend.capture(snap, staged)
        driver.pause(record, paths)  # its processes stand still while its files are read
        try:
            captured = backend.capture(snap, staged)
        except BaseException:
            _quietly(driver.resume, record, paths)
            raise
        try:
            driver.resume(record, paths)
        except BaseException:
            _quietly(backend.remove, snap, captured)
            raise
        return captured

    def _next_name(self, instance: str) -> str:
        """snap0, snap1, ...: one past the highest snapN taken, as Incus names them."""
        taken = {snapshot.name for snapshot in self.store.list(SnapshotRecord, instance=instance)}
        numbers = [int(match[1]) for name in taken if (match := _DEFAULT.fullmatch(name))]
        number = max(numbers, default=-1) + 1
        while f"snap{number}" in taken:
            number += 1
        return f"snap{number}"

    def restore(
        self, instance: str, name: str, *, wait: bool = False, timeout: float = READY_TIMEOUT
    ) -> Restored:
        """Put the instance back to snapshot `name`. A running or paused instance is stopped at once,
        restored and started again (with `wait`, until it is ready). A stateful snapshot resumes
        the guest where it was instead, running (nothing to wait for)."""
        snapshot = self.get(instance, name)
        with self.store.lock("instance", snapshot.instance), host_errors(f"restoring {snapshot.instance}"):
            snapshot = self.get(instance, name)
            record = self.store.get(InstanceRecord, snapshot.instance)
            driver, paths = self.drivers(record.kind), self.paths(record.name)
            status = driver.status(record, paths)
            source = snapshot_dir(paths.dir, snapshot.name)
            if not source.is_dir() or source.is_symlink():
                raise StateError(
                    f"snapshot {snapshot.name!r} of {record.name!r} has lost its data: {source} is missing",
                    hint=f"delete it: virtkit snapshot delete {record.name} {snapshot.name}",
                )
            live = status.pid is not None
            backend = self.backends(record, paths, live)
            backend.check(snapshot.name, _captured(snapshot), source)
            restart = status.state in (InstanceState.RUNNING, InstanceState.PAUSED)
            if snapshot.stateful and restart and not snapshot.files:
                self._load_live(record, backend, snapshot)
                return Restored(snapshot, status.state, restarted=False, resumed=True)
            lifecycle = Lifecycle(self.root, self.store, self.drivers)
            if status.state is not InstanceState.STOPPED:
                lifecycle.stop(record.name, force=True)
            driver.cleanup(record, paths)  # a container's overlay must be unmounted
            try:
                self.backends(record, paths, False).restore(snapshot.name, _captured(snapshot), source)
            except BaseException:
                if restart:
                    _quietly(lifecycle.start, record.name)
                raise
            if snapshot.stateful:
                self._start_at(record, paths, snapshot)
                return Restored(snapshot, status.state, restarted=restart, resumed=True)
            if restart:
                lifecycle.start(record.name, wait=wait, timeout=timeout)
            return Restored(snapshot, status.state, restart)

    def _load_live(self, record: InstanceRecord, backend: Backend, snapshot: SnapshotRecord) -> None:
        """Load stateful `snapshot` into the instance's running QEMU; stopped if that fails."""
        try:
            backend.load_state(snapshot.name, _captured(snapshot))
        except Exception as exc:
            _quietly(lambda: Lifecycle(self.root, self.store, self.drivers).stop(record.name, force=True))
            raise _state_lost(record.name, snapshot.name, exc) from exc
        record.state = InstanceState.RUNNING
        self.store.put(record)

    def _start_at(self, record: InstanceRecord, paths: InstancePaths, snapshot: SnapshotRecord) -> None:
        """Start the (restored, stopped) instance with its vCPUs stopped, load stateful `snapshot`
        into it and let it run; stopped again if loading fails."""
        paused = _PausedStart(self.root, self.store, self.drivers)
        paused.start(record.name)
        try:
            self.backends(record, paths, True).load_state(snapshot.name, _captured(snapshot))
        except Exception as exc:
            _quietly(lambda: paused.stop(record.name, force=True))
            raise _state_lost(record.name, snapshot.name, exc) from exc

    def delete(self, instance: str, name: str) -> SnapshotRecord:
        """Remove a snapshot's data and its record."""
        snapshot = self.get(instance, name)
        doing = f"deleting snapshot {snapshot.name} of {snapshot.instance}"
        with self.store.lock("instance", snapshot.instance), host_errors(doing):
            snapshot = self.get(instance, name)
            record = self.store.get(InstanceRecord, snapshot.instance)
            driver, paths = self.drivers(record.kind), self.paths(record.name)
            live = driver.status(record, paths).pid is not None
            self.backends(record, paths, live).remove(snapshot.name, _captured(snapshot))
            remove_tree(snapshot_dir(paths.dir, snapshot.name))
            self.store.delete(SnapshotRecord, record.name, snapshot.name)
            return snapshot



def _check_stateful(record: InstanceRecord, live: bool) -> None:
    """StateError when `record` cannot have a stateful snapshot taken now (before anything is made)."""
    if record.kind is InstanceKind.CONTAINER:
        raise StateError(NO_STATE, hint=NO_STATE_HINT)
    if not live:
        raise StateError(
            f"a stateful snapshot saves the memory of a running VM, and {record.name!r} is stopped "
            "(its disks alone are its whole state)",
            hint=f"take it without --stateful: virtkit snapshot create {record.name}",
        )


def _state_lost(instance: str, snapshot: str, exc: Exception) -> VirtkitError:
    return VirtkitError(
        f"loading the memory state of snapshot {snapshot} into {instance} failed: {exc}. Its running state "
        f"was lost, so {instance} was stopped; its disks may already be the snapshot's",
        hint=f"start it to boot from its disks (virtkit start {instance}), or try the restore again",
    )


def _quietly(step: Callable[..., object], *args: object) -> None:
    """An undo step: logged when it fails, so that the first error is the one reported."""
    try:
        step(*args)
    except Exception as exc:
        log.error("undoing a snapshot step failed: %s", exc)


def backend_for(record: InstanceRecord, paths: InstancePaths, live: bool) -> Backend:
    """How this instance is snapshotted: by its kind, from its saved runtime (the VM's disks)."""
    if record.kind is InstanceKind.CONTAINER:
        from virtkit.drivers.oci.plan import ContainerFiles
        from virtkit.storage.containersnap import ContainerBackend

        layout = ContainerFiles(paths)
        return ContainerBackend(layout.upper, layout.work)
    return _vm_backend(record, paths, live)


def _vm_backend(record: InstanceRecord, paths: InstancePaths, live: bool) -> Backend:
    """The VM's own writable disks (qcow2: internal snapshots; raw: copied) and UEFI variables; not
    an image's disk, a seed or a pool volume, which are not the instance's own."""
    from virtkit.drivers.qemu.monitor import Monitor
    from virtkit.drivers.qemu.spec import VmSpec
    from virtkit.storage.vmsnap import VmBackend

    try:
        spec = VmSpec.from_dict(Runtime.from_dict(json.loads(paths.runtime.read_text())).config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"the saved runtime of instance {record.name!r} cannot be read ({paths.runtime}): {exc}",
            hint=f"delete and re-create the instance: virtkit delete {record.name}",
        ) from exc
    home = Path(os.path.abspath(paths.dir))

    def own(path: str) -> bool:
        return Path(os.path.abspath(path)).parent == home

    writable = [disk for disk in spec.disks if not disk.readonly and own(disk.path)]
    disks = tuple(Path(disk.path).name for disk in writable if disk.format == "qcow2")
    files = [Path(disk.path).name for disk in writable if disk.format != "qcow2"]
    if spec.uefi is not None and own(spec.uefi.vars):
        files.append(Path(spec.uefi.vars).name)
    others = [f"the disk {disk.path}" for disk in spec.disks if not disk.readonly and not own(disk.path)]
    others += [f"the block volume {vol.pool}/{vol.name}" for vol in spec.volumes]
    monitor = Monitor(paths.monitor, name=record.name, timeout=QMP_TIMEOUT) if live else None
    return VmBackend(home, disks, tuple(files), monitor, others=tuple(others))


def _with_freeze(notes: tuple[str, ...], freeze: str) -> tuple[str, ...]:
    """A running VM's notes with what its freeze did: frozen, the guest's filesystems were
    consistent (no power cut to replay); not frozen, the capture's own note says what it is."""
    from virtkit.drivers.qemu.fsfreeze import UNFROZEN

    if not freeze or freeze.startswith(UNFROZEN):
        return notes
    return (f"disk-only, {freeze}", *(n for n in notes if not n.startswith("disk-only")))
