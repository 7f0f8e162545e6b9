"""`virtkit move NAME --to REMOTE --live`: a running VM moved to another host without stopping it.

The phases, each written to a journal (JOURNAL in the instance's directory) before it starts:

    prepare     the destination defines the VM and starts its QEMU paused, waiting (ops/migratein.py)
    transfer    the disks mirrored into the destination, then RAM and device state migrated with a
                downtime limit; the guest runs here all along, but for the RAM copy under TCG
                (drivers/qemu/migration.py says why)
    switchover  the migration has completed (the guest is paused here); the mirrors' last pass,
                then the destination is told to run the guest
    confirmed   the guest runs there: the VM is removed here

A failure before the destination runs discards the destination and lets the guest go on here (its
QEMU never lost anything it needs). A rerun after this process was killed reads the journal:
before `confirmed` it puts things back the same way (asking the destination whether it already
runs the guest, in which case it only removes the VM here), then moves again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtkit.drivers.base import InstancePaths, get_driver
from virtkit.drivers.qemu import migration
from virtkit.drivers.qemu.monitor import Monitor
from virtkit.drivers.qemu.spec import VmSpec
from virtkit.errors import ConflictError, NotFoundError, RemoteError, SpecError, StateError, VirtkitError
from virtkit.model import InstanceKind, InstanceRecord, InstanceState, validate_name
from virtkit.ops import events
from virtkit.ops.lifecycle import Lifecycle, _refuse_if_cloned
from virtkit.store import Store, atomic_write

if TYPE_CHECKING:
    from virtkit.api.client import Client

log = logging.getLogger(__name__)

JOURNAL = "migration.json"
DOWNTIME_MS = 50  # QEMU's own default is 300 ms
PREPARE_TIMEOUT = 120.0
PHASES = ("prepare", "transfer", "switchover", "confirmed")


@dataclass
class Moved:
    name: str
    remote: str
    downtime_ms: int | None = None  # QEMU's: from the source's stop to the migration's end
    paused_ms: int | None = None  # the guest's whole pause: QEMU's downtime (or the whole RAM
    # copy, when `memory_copy` is "paused") and the switchover
    memory_copy: str = "live"  # "paused" under TCG (drivers/qemu/migration.py says why)
    total_s: float = 0.0
    migration_ms: int | None = None
    ram_bytes: int = 0
    disk_bytes: int = 0
    recovered: str | None = None  # what a rerun found and put back first
    phases: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


Sink = Callable[[migration.Progress], None]


def _quiet(_progress: migration.Progress) -> None:
    return None


class LiveMove:
    """Live moves from the state root `root` to the host `client` talks to (remote `remote`)."""

    def __init__(self, root: Path, store: Store, client: Client, remote: str) -> None:
        self.root, self.store, self.client, self.remote = root, store, client, remote
        self.driver = get_driver(InstanceKind.VM)

    def move(self, name: str, *, downtime_ms: int = DOWNTIME_MS, postcopy: bool = False,
             networks: dict[str, str] | None = None, progress: Sink = _quiet) -> Moved:  # fmt: skip
        record = self.store.get(InstanceRecord, validate_name(name))
        paths = InstancePaths.of(self.root, record.name)
        recovered = self.recover(record.name) if (paths.dir / JOURNAL).exists() else None
        if recovered == "moved":
            return Moved(record.name, self.remote, recovered=recovered)
        record = self.store.get(InstanceRecord, record.name)
        spec = self._check(record, paths, downtime_ms)
        for network in networks or {}:
            if network not in {nic.network for nic in record.nics}:
                raise SpecError(f"{record.name!r} has no NIC on network {network!r} to map")
        began = time.monotonic()
        with self.store.lock("instance", record.name):
            moved = self._transfer(record, paths, spec, downtime_ms, postcopy, networks or {}, progress)
        moved.recovered = recovered
        self._remove_here(record.name, paths)
        moved.total_s = time.monotonic() - began
        events.emit(self.root, "instance", "moved", record.name, to=self.remote)
        return moved

    def _check(self, record: InstanceRecord, paths: InstancePaths, downtime_ms: int) -> VmSpec:
        if record.kind is not InstanceKind.VM:
            raise SpecError(f"{record.name!r} is a container: a live move is for VMs",
                            hint=f"move it cold: virtkit move {record.name} --to {self.remote}")  # fmt: skip
        if not 1 <= downtime_ms <= 60_000:
            raise SpecError(f"invalid downtime limit {downtime_ms} ms: give 1 to 60000")
        state = self.driver.status(record, paths).state
        if state is not InstanceState.RUNNING:
            raise StateError(f"instance {record.name!r} is {state.value}: a live move needs it running",
                             hint=f"move it cold: virtkit move {record.name} --to {self.remote}")  # fmt: skip
        why = _unmovable(record, paths)
        if why:
            cold = f"stop it and move it cold: virtkit move {record.name} --to {self.remote}"
            raise SpecError(f"{record.name!r} cannot move live yet: {why}", hint=cold)
        _refuse_if_cloned(self.root, self.store, record, force=False)
        return VmSpec.from_dict(json.loads(paths.runtime.read_text())["config"])

    def _transfer(self, record: InstanceRecord, paths: InstancePaths, spec: VmSpec, downtime_ms: int,
                  postcopy: bool, networks: dict[str, str], progress: Sink) -> Moved:  # fmt: skip
        nodes = [f"disk{i}" for i, disk in enumerate(spec.disks) if not disk.readonly]
        monitor = Monitor(paths.monitor, name=record.name)
        moved, mark = Moved(record.name, self.remote), time.monotonic()
        paused = migration.paused_copy(spec.accel)
        moved.memory_copy = "paused" if paused else "live"

        def seen(step: migration.Progress) -> None:
            if step.phase == "disks":
                moved.disk_bytes = step.disk_total
            progress(step)

        self._journal(paths, "prepare")
        prepared = self._prepare(record, nodes, networks, postcopy)
        moved.phases["prepare"] = time.monotonic() - mark
        self._journal(paths, "transfer")
        try:
            mark = time.monotonic()
            exports = {n: migration.Export(n, prepared["exports"][n]) for n in nodes}
            migration.mirror(monitor, prepared["host"], prepared["nbd_port"], exports, progress=seen)
            moved.phases["disks"] = time.monotonic() - mark
            mark = time.monotonic()
            done = migration.migrate(monitor, prepared["host"], prepared["migrate_port"],
                                     downtime_ms=downtime_ms, postcopy=postcopy, paused=paused,
                                     progress=seen)  # fmt: skip
            moved.phases["memory"] = time.monotonic() - mark
        except BaseException:
            self._roll_back(record, paths, nodes)
            raise
        self._journal(paths, "switchover")
        mark = time.monotonic()
        try:
            migration.complete_mirrors(monitor, nodes)
            self.client.request("POST", f"/1.0/migrations/{record.name}/finish", timeout=PREPARE_TIMEOUT)
        except BaseException:
            if self._remote_runs(record.name) is not True:
                self._roll_back(record, paths, nodes)
                raise
        moved.phases["switchover"] = time.monotonic() - mark
        pause = moved.phases["memory"] if paused else (done.downtime_ms or 0) / 1000
        moved.paused_ms = round(1000 * (pause + moved.phases["switchover"]))
        self._journal(paths, "confirmed")
        moved.downtime_ms, moved.migration_ms = done.downtime_ms, done.total_ms
        moved.ram_bytes = done.ram_transferred
        return moved

    def _prepare(self, record: InstanceRecord, nodes: list[str], networks: dict[str, str],
                 postcopy: bool) -> dict[str, Any]:  # fmt: skip
        offer = {
            "name": record.name, "uuid": record.uuid, "image": record.image, "arch": record.arch,
            "cpus": record.cpus, "memory": record.memory, "config": record.config, "labels": record.labels,
            "nics": [{"network": networks.get(n.network, n.network), "mac": n.mac, "ip": n.ip,
                      "model": n.model, "limit": n.limit, "allow_host": n.allow_host} for n in record.nics],
            "disks": nodes, "postcopy": postcopy,
        }  # fmt: skip
        try:
            return dict(self.client.request("POST", "/1.0/migrations", json=offer, timeout=PREPARE_TIMEOUT))
        except ConflictError:  # the name or UUID is taken there: nothing of ours to discard
            (InstancePaths.of(self.root, record.name).dir / JOURNAL).unlink(missing_ok=True)
            raise
        except BaseException:  # the destination may have made it before failing or going silent
            self._discard_remote(record.name)
            (InstancePaths.of(self.root, record.name).dir / JOURNAL).unlink(missing_ok=True)
            raise

    def _roll_back(self, record: InstanceRecord, paths: InstancePaths, nodes: list[str]) -> None:
        """The guest goes on here; the destination's copy is discarded (or left to its server's restart)."""
        try:
            migration.abort_source(Monitor(paths.monitor, name=record.name), nodes)
        except VirtkitError as exc:
            log.error("%s: could not resume the guest here after a failed move: %s", record.name, exc)
        self._discard_remote(record.name)
        (paths.dir / JOURNAL).unlink(missing_ok=True)

    def _discard_remote(self, name: str) -> None:
        try:
            self.client.request("DELETE", f"/1.0/migrations/{name}")
        except NotFoundError:
            pass
        except VirtkitError as exc:
            log.warning("%s: the destination's copy is left until its server restarts: %s", name, exc)

    def _remote_runs(self, name: str) -> bool | None:
        """Whether the destination runs the guest as its own now (None: it cannot be asked)."""
        try:
            state = self.client.request("GET", f"/1.0/migrations/{name}")
        except NotFoundError:
            return False
        except (RemoteError, VirtkitError):
            return None
        return bool(not state.get("incoming") and state.get("state") == "running")

    def recover(self, name: str) -> str:
        """Put back what a move killed midway left: "moved" (it had switched over: only the VM here
        was left, now removed) or "resumed" (the guest runs here; the destination's copy discarded)."""
        record = self.store.get(InstanceRecord, name)
        paths = InstancePaths.of(self.root, record.name)
        phase = json.loads((paths.dir / JOURNAL).read_text()).get("phase")
        if phase == "confirmed" or (phase == "switchover" and self._remote_runs(name) is True):
            self._remove_here(name, paths)
            return "moved"
        spec = VmSpec.from_dict(json.loads(paths.runtime.read_text())["config"])
        nodes = [f"disk{i}" for i, disk in enumerate(spec.disks) if not disk.readonly]
        with self.store.lock("instance", name):
            if self.driver.status(record, paths).state is InstanceState.STOPPED:
                self._discard_remote(name)
                (paths.dir / JOURNAL).unlink(missing_ok=True)
                raise StateError(f"the move of {name!r} was interrupted and its QEMU here is gone",
                                 hint=f"see {paths.log}; start it again: virtkit start {name}")  # fmt: skip
            self._roll_back(record, paths, nodes)
        return "resumed"

    def _remove_here(self, name: str, paths: InstancePaths) -> None:
        """The guest runs on the destination: stop this QEMU (paused since the switchover), remove the VM."""
        Lifecycle(self.root, self.store).delete(name, force=True)

    @staticmethod
    def _journal(paths: InstancePaths, phase: str) -> None:
        atomic_write(paths.dir / JOURNAL, json.dumps({"phase": phase, "at": time.time()}))


def cold_instead(store: Store, name: str) -> str | None:
    """Why `name` moves cold although --live was asked (None: it is a VM, it moves live). A
    running container would need CRIU to keep its processes, and virtkit does not drive CRIU."""
    import shutil

    from virtkit.host.criu import criu_works

    record = store.get(InstanceRecord, validate_name(name))
    if record.kind is InstanceKind.VM:
        return None
    works, why = criu_works(shutil.which)
    reason = "virtkit does not checkpoint containers with CRIU yet" if works else why
    return f"a container moves live only with CRIU ({reason}; see `virtkit host check`): moving it cold"


def _unmovable(record: InstanceRecord, paths: InstancePaths) -> str | None:
    if record.volumes:
        return "it has volumes attached (detach them, or move it cold)"
    if record.layers or record.base != "image":
        return "it is a linked clone or has a disk of its own (flatten is not enough: move it cold)"
    spec = VmSpec.from_dict(json.loads(paths.runtime.read_text())["config"])
    if spec.uefi is not None:
        return "its UEFI variable store is not mirrored"
    if spec.iso is not None:
        return "an ISO is attached"
    return None
