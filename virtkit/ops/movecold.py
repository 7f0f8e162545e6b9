"""`virtkit move NAME --to REMOTE` (cold: VMs and containers) and `virtkit copy NAME REMOTE:NEW`.

A cold move, each step written to a journal (JOURNAL in the instance's directory) before it starts:

    precopy    a running container only (ops/moveprecopy.py): a snapshot of it is taken and the whole
               container sent and imported there while it runs on here
    stopping   the checks passed (remote reachable, name and UUID free there, the instance's networks
               there or mapped, no volumes); a running instance is stopped (the journal says it ran)
    delta      after a pre-copy: what changed since its snapshot is sent and applied there
    transfer   its archive (ops/backup.py, with its snapshots and image) is exported into a file under
               ROOT/transfers/ that is uploaded as it grows, then imported there keeping its identity:
               name, UUID, MACs, and each address where it is free on the network of that name
    starting   the import has succeeded there; an instance that ran is started there, and the move
               waits until that host reports it running
    confirmed  the instance is removed here (disks, leases, records)

Until `confirmed` a failure deletes what the destination has of it (only an instance with its UUID)
and starts it here again if it ran. A rerun after this process was killed reads the journal: from
`starting` on (the destination has the whole instance) it completes the move; before, it waits for
an import still running there, keeps what it finished (a whole archive's: in `transfer`) or
discards it (any other, a pre-copy's or its difference's included), puts the instance back as it
was, and moves again.

A copy to a remote is the same stream without the identity (a new UUID, MACs and addresses: the
import's default) and without stopping anything: the export of a running instance reads a
temporary snapshot of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtkit.drivers.base import InstancePaths, get_driver
from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError, VirtkitError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, InstanceState, SnapshotRecord
from virtkit.ops import events, moveprecopy
from virtkit.ops.backup import Backups
from virtkit.ops.lifecycle import DriverFor, Lifecycle
from virtkit.ops.movedest import Destination, Growing
from virtkit.storage.archive import remove_tree
from virtkit.storage.snapshots import sweep
from virtkit.store import Store, atomic_write
from virtkit.store.files import temp_name
from virtkit.units import validate_name

log = logging.getLogger(__name__)

JOURNAL = "move.json"
LIVE_JOURNAL = "migration.json"  # ops/movelive.py's
TRANSFERS = "transfers"
RUNNING_TIMEOUT = 300.0
IMPORT_WAIT = 600.0
COMPRESSION = "zstd"  # "none" measured no faster on loopback (benchmarks/move_cold.py); fewer bytes on a LAN
SUFFIXES = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}
ANY = "*"  # --target-network THERE alone: every network maps to THERE


@dataclass
class Moved:
    name: str
    remote: str
    kind: str = ""
    was_running: bool = False
    downtime_s: float | None = None  # stop here -> running there
    bytes: int = 0  # sent while it was stopped (all of it, without a pre-copy)
    precopy_bytes: int = 0  # sent while it ran (a container's pre-copy)
    total_s: float = 0.0
    recovered: str | None = None  # what a rerun found and did first: "moved" or "resumed"
    nics: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds: stop, transfer, start, remove

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Plan:
    record: InstanceRecord
    nics: list[str]  # what the import's `nic` parameters say
    notes: list[str]


class ColdMove:
    """Cold moves and copies from the state root `root` to `dest` (the remote named `remote`)."""

    def __init__(self, root: Path, store: Store, dest: Destination, remote: str,
                 drivers: DriverFor = get_driver,
                 said: Callable[[str, float], None] | None = None) -> None:  # fmt: skip
        """`said(phase, seconds)` is told of each phase of a move as it ends."""
        self.root, self.store, self.dest, self.remote, self.drivers = root, store, dest, remote, drivers
        self.said = said or (lambda _phase, _seconds: None)
        self.lifecycle = Lifecycle(root, store, drivers)

    # --- move -------------------------------------------------------------------------------------

    def move(self, name: str, *, networks: dict[str, str] | None = None, pool: str | None = None) -> Moved:
        """Move instance `name` to the destination (completing or undoing an interrupted move first)."""
        wanted = validate_name(name)
        began = time.monotonic()
        with self.store.lock("move", wanted):
            record = self.store.get(InstanceRecord, wanted)
            paths = InstancePaths.of(self.root, wanted)
            recovered = self.recover(wanted) if (paths.dir / JOURNAL).exists() else None
            if recovered == "moved":
                return Moved(wanted, self.remote, kind=record.kind.value, recovered=recovered,
                             total_s=time.monotonic() - began)  # fmt: skip
            plan = self._check(self.store.get(InstanceRecord, wanted), networks or {}, pool)
            moved = self._run(plan, paths)
        moved.recovered = recovered
        moved.total_s = time.monotonic() - began
        events.emit(self.root, "instance", "moved", wanted, to=self.remote)
        return moved

    def _check(self, record: InstanceRecord, networks: dict[str, str], pool: str | None) -> Plan:
        if (InstancePaths.of(self.root, record.name).dir / LIVE_JOURNAL).exists():
            raise StateError(f"a live move of {record.name!r} was interrupted",
                             hint=f"rerun it: virtkit move {record.name} --to REMOTE --live")  # fmt: skip
        if record.volumes:
            names = ", ".join(f"{v.pool}/{v.name}" for v in record.volumes)
            raise SpecError(f"{record.name!r} has volumes attached ({names}): a move does not carry "
                            "them yet", hint="detach them first, and copy their data on its own")  # fmt: skip
        if self.store.find(ImageRecord, record.image or "") is None:
            raise StateError(f"the image {record.name!r} was made from is no longer here: "
                             "it cannot be carried")  # fmt: skip
        state = self.drivers(record.kind).status(record, InstancePaths.of(self.root, record.name)).state
        if state not in (InstanceState.RUNNING, InstanceState.STOPPED):
            raise StateError(f"instance {record.name!r} is {state.value}: a move takes it running or stopped",
                             hint=f"virtkit resume {record.name}, or virtkit stop {record.name}")  # fmt: skip
        if record.kind is InstanceKind.CONTAINER and state is InstanceState.RUNNING:
            moveprecopy.check_free(self, record.name)
        taken = self._taken(record.name, record.uuid)
        if pool is not None and validate_name(pool, what="pool name") not in self.dest.pools():
            raise NotFoundError(f"storage pool {pool!r} does not exist on {self.remote}")
        nics, notes = self._nics(record, networks, taken)
        return Plan(record, nics, notes)

    def _taken(self, name: str, uuid: str | None) -> list[dict[str, Any]]:
        """The destination's instances, once neither `name` nor `uuid` is among them."""
        there = self.dest.instances()
        for other in there:
            if other.get("name") == name:
                raise ConflictError(
                    f"an instance named {name!r} exists on {self.remote} already",
                    hint=f"delete it there first: virtkit delete {self.remote}:{name}",
                )
            if uuid is not None and other.get("uuid") == uuid:
                raise ConflictError(f"instance {other.get('name')!r} on {self.remote} has the UUID of "
                                    f"{name!r} ({uuid}): it was moved or copied there with its identity",
                                    hint="delete it there first if it is a leftover")  # fmt: skip
        return there

    def _nics(self, record: InstanceRecord, networks: dict[str, str], there: list[dict[str, Any]]
              ) -> tuple[list[str], list[str]]:  # fmt: skip
        own = {nic.network for nic in record.nics}
        for network in networks:
            if network != ANY and network not in own:
                raise SpecError(f"{record.name!r} has no NIC on network {network!r} to map",
                                hint=f"its networks: {', '.join(sorted(own)) or 'none'}")  # fmt: skip
        subnets = self.dest.networks()
        used = {(n.get("network"), n.get("ip")) for other in there for n in other.get("nics") or []}
        macs = {n.get("mac") for other in there for n in other.get("nics") or []}
        params, notes = [], []
        for nic in record.nics:
            target = networks.get(nic.network, networks.get(ANY, nic.network))
            if target not in subnets and target != "default":
                raise NotFoundError(
                    f"network {target!r} of {record.name!r} does not exist on {self.remote}",
                    hint=f"create it there, or map it: --target-network {nic.network}=OTHER",
                )
            if nic.mac in macs:
                raise ConflictError(f"MAC {nic.mac} of {record.name!r} is another instance's on "
                                    f"{self.remote}", hint="give one of them another MAC")  # fmt: skip
            param = f"{target},mac={nic.mac}"
            if target in subnets and _inside(nic.ip, subnets[target]) and (target, nic.ip) not in used:
                param += f",ip={nic.ip}"
            elif nic.ip:  # "": a bridged network's NIC, whose address the LAN gives
                notes.append(f"its address {nic.ip} is not free on {target!r} there: it gets another one")
            params.append(param)
        return params, notes

    def _run(self, plan: Plan, paths: InstancePaths) -> Moved:
        record = plan.record
        was_running = self.drivers(record.kind).status(record, paths).state is InstanceState.RUNNING
        precopy = was_running and record.kind is InstanceKind.CONTAINER
        moved = Moved(record.name, self.remote, kind=record.kind.value, was_running=was_running,
                      notes=list(plan.notes))  # fmt: skip
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            moved.phases[name], mark = now - mark, now
            self.said(name, moved.phases[name])

        try:
            if precopy:
                self._journal(paths, "precopy", record, was_running)
                moveprecopy.take(self, record.name)
                _, moved.precopy_bytes = self._stream(record.name, record.name, identity=True, nics=plan.nics)
                phase("precopy")
            self._journal(paths, "stopping", record, was_running)
            stopped = mark = time.monotonic()
            if was_running:
                self.lifecycle.stop(record.name)
                phase("stop")
            self._journal(paths, "delta" if precopy else "transfer", record, was_running)
            done, moved.bytes = self._stream(record.name, record.name, identity=True, nics=plan.nics,
                                             since=moveprecopy.PRECOPY if precopy else None)  # fmt: skip
            if precopy:
                self.dest.delete_snapshot(record.name, moveprecopy.PRECOPY)
            phase("transfer")
            moved.notes += list(done.get("notes") or [])
            moved.nics = list((done.get("instance") or {}).get("nics") or [])
            self._journal(paths, "starting", record, was_running)
            self._arrive(record.name, was_running)
            phase("start")
        except BaseException:
            self._undo(record, paths, was_running)
            raise
        self._journal(paths, "confirmed", record, was_running)
        if was_running:
            moved.downtime_s = time.monotonic() - stopped
        self._remove_here(record.name)
        phase("remove")
        return moved

    def _arrive(self, name: str, was_running: bool) -> None:
        """The destination's instance as the source's was: running (confirmed there), or stopped."""
        if was_running and self.dest.state(name) != "running":
            with contextlib.suppress(StateError):  # a start still under way there (a killed move's)
                self.dest.start(name)
        deadline = time.monotonic() + RUNNING_TIMEOUT
        wanted = "running" if was_running else "stopped"
        while (state := self.dest.state(name)) != wanted:
            if time.monotonic() > deadline or state in (None, "error", "stopped" if was_running else ""):
                raise StateError(f"{name!r} is {state or 'gone'} on {self.remote}, not {wanted}: "
                                 "the move is undone")  # fmt: skip
            time.sleep(0.2)

    def _undo(self, record: InstanceRecord, paths: InstancePaths, was_running: bool) -> None:
        """Before `confirmed`: the destination's copy deleted, the instance here as it was."""
        self._discard_there(record.name, record.uuid)
        moveprecopy.forget_here(self, record.name)
        if was_running:
            try:
                status = self.drivers(record.kind).status(record, paths).state
                if status in (InstanceState.STOPPED, InstanceState.ERROR):
                    self.lifecycle.start(record.name)
            except VirtkitError as exc:
                log.error("%s: could not start it here again after a failed move: %s", record.name, exc)
        (paths.dir / JOURNAL).unlink(missing_ok=True)

    def _discard_there(self, name: str, uuid: str) -> None:
        try:
            there = next((i for i in self.dest.instances() if i.get("name") == name), None)
            if there is not None and there.get("uuid") == uuid:
                self.dest.delete(name)
        except VirtkitError as exc:
            log.warning("%s: what %s has of it could not be deleted there (%s): delete it there "
                        "(virtkit delete --force %s:%s) once it answers", name, self.remote, exc,
                        self.remote, name)  # fmt: skip

    def _remove_here(self, name: str) -> None:
        self.lifecycle.delete(name, force=True)

    # --- recovery ---------------------------------------------------------------------------------

    def recover(self, name: str) -> str:
        """Put back what a killed move left: "moved" (the destination has all of it: the move was
        completed) or "resumed" (the destination's part discarded, the instance here as it was)."""
        record = self.store.get(InstanceRecord, name)
        paths = InstancePaths.of(self.root, name)
        journal = json.loads((paths.dir / JOURNAL).read_text())
        phase, was_running = journal.get("phase"), bool(journal.get("was_running"))
        if phase in ("precopy", "transfer", "delta"):
            for operation in self.dest.imports(name):  # an import the killed move had started
                with contextlib.suppress(VirtkitError):
                    self.dest.wait(operation, IMPORT_WAIT)
        there = next((i for i in self.dest.instances() if i.get("name") == name), None)
        whole = there is not None and there.get("uuid") == record.uuid and phase in ("transfer", "starting")
        if phase == "confirmed" or whole:
            if phase != "confirmed":
                try:
                    self._arrive(name, was_running)
                except BaseException:
                    self._undo(record, paths, was_running)
                    raise
                self._journal(paths, "confirmed", record, was_running)
            self._remove_here(name)
            log.info("%s: an interrupted move to %s was completed", name, self.remote)
            return "moved"
        self._undo(record, paths, was_running)
        log.info("%s: an interrupted move to %s was undone", name, self.remote)
        return "resumed"

    @staticmethod
    def _journal(paths: InstancePaths, phase: str, record: InstanceRecord, was_running: bool) -> None:
        atomic_write(
            paths.dir / JOURNAL,
            json.dumps({"phase": phase, "uuid": record.uuid, "was_running": was_running, "at": time.time()}),
        )

    # --- copy -------------------------------------------------------------------------------------

    def copy(self, name: str, new: str, *, snapshot: str | None = None) -> Moved:
        """Copy instance `name` (it may run; it is not touched) to the destination as `new`: a new
        identity there. With `snapshot`, the copy is that snapshot's state."""
        record = self.store.get(InstanceRecord, validate_name(name))
        new = validate_name(new, what="new instance name")
        began = time.monotonic()
        if snapshot is not None:
            self.store.get(SnapshotRecord, record.name, validate_name(snapshot, what="snapshot name"))
        self._taken(new, None)
        copied = Moved(new, self.remote, kind=record.kind.value)
        if record.volumes:
            copied.notes.append("its volumes are not copied")
        done, copied.bytes = self._stream(record.name, new, identity=False, nics=[],
                                          instance_only=snapshot is None)  # fmt: skip
        copied.notes += list(done.get("notes") or [])
        uuid = str((done.get("instance") or {}).get("uuid") or "")
        if snapshot is not None:
            try:
                self.dest.restore(new, snapshot)
                self.dest.forget_snapshots(new)
            except BaseException:
                self._discard_there(new, uuid)
                raise
        copied.nics = list((done.get("instance") or {}).get("nics") or [])
        copied.total_s = time.monotonic() - began
        return copied

    # --- the stream -------------------------------------------------------------------------------

    def _stream(self, name: str, as_name: str, *, identity: bool, nics: list[str],
                instance_only: bool = False, since: str | None = None,
                ) -> tuple[dict[str, Any], int]:  # fmt: skip
        """Export `name` (only what changed since snapshot `since`, if given) into a file under
        ROOT/transfers/ uploaded (and imported there as `as_name`) as it grows; the import's result
        and the bytes sent. The file goes in any case."""
        directory = _transfer_dir(self.root)
        follower = Growing(directory)

        def export() -> None:
            try:
                backups = Backups(self.root, self.store, self.drivers)
                backups.export(name, directory / f"{name}{SUFFIXES[COMPRESSION]}", compression=COMPRESSION,
                               instance_only=instance_only, since=since)  # fmt: skip
            except BaseException as exc:
                failed = exc if isinstance(exc, VirtkitError) else VirtkitError(f"the export failed: {exc}")
                follower.error = failed
            finally:
                follower.written.set()

        writer = threading.Thread(target=export, name=f"vk-move-{name}", daemon=True)
        writer.start()
        try:
            done = self.dest.upload(follower, as_name, identity=identity, nics=nics,
                                    incremental=since is not None)  # fmt: skip
            if follower.error is not None:  # cannot be: the upload would have been cut short
                raise follower.error
            return done, follower.sent
        finally:
            follower.close()
            writer.join()
            remove_tree(directory)


def _inside(ip: str | None, subnet: str) -> bool:
    import ipaddress

    try:
        return ip is not None and ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(subnet)
    except ValueError:
        return False


def _transfer_dir(root: Path) -> Path:
    """A new private directory under ROOT/transfers/ (those of dead processes swept first)."""
    top = root / TRANSFERS
    top.mkdir(mode=0o700, parents=True, exist_ok=True)
    sweep(top)
    path = top / temp_name("move")
    os.mkdir(path, 0o700)
    return path
