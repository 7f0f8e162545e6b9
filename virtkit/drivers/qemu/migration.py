"""Live migration between two QEMUs, over their QMP monitors (docs/migration.md).

The destination QEMU is started with the VM's saved argv plus `INCOMING_ARGS`: paused (`-S`), waiting
for a migration it is told about later. `listen` then exports its disks writable over NBD (under a
random export name) and makes it accept the migration stream. Its block devices are activated only
when it is told to run (`late-block-activate`), after the NBD server is gone.

The source mirrors each disk into those exports (`blockdev-mirror`, writes mirrored synchronously
once the copy is ready), then migrates RAM and device state with a downtime limit (auto-converge
on, post-copy when asked). When the migration completes the source is paused; `complete_mirrors`
makes each mirror do its last pass and drop its target. Until the destination runs (`activate`),
the source can always go on (`abort_source`): nothing it needs was changed.

Under TCG the RAM is copied with the guest paused (`paused_copy`): QEMU's TCG dirty tracking can
lose a write the guest makes while a pass is being synced (kvm-unit-tests carries a reproducer,
"QEMU TCG migration lost dirty bit"), and the destination then runs with a stale page. Seen here
with QEMU 7.2: a tiny guest on a network, moved live back and forth under load, crashed on its
destination about once in ten moves (a corrupt hrtimer tree), and not once in 80 moves paused
(two runs of 40). The disks are still mirrored while the guest runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from virtkit.drivers.qemu.monitor import Execute, Monitor
from virtkit.errors import HostCapabilityError, ToolError

log = logging.getLogger(__name__)

INCOMING_ARGS = ["-S", "-incoming", "defer"]
TARGET_PREFIX = "mig-"
POLL = 0.02  # seconds between looks at a mirror getting ready
FAST_POLL = 0.005  # seconds between looks at a migration ending (the guest is paused meanwhile)
SHOW_EVERY = 0.25  # seconds between progress reports
MIRROR_TIMEOUT = 600.0
MIGRATE_TIMEOUT = 600.0
POSTCOPY_AFTER = 5  # RAM passes ("dirty-sync-count") before post-copy is switched on, when allowed
DONE = {"completed", "failed", "cancelled"}


@dataclass(frozen=True)
class Export:
    """One disk exported by the destination: its block node and its NBD export name."""

    node: str
    name: str


@dataclass(frozen=True)
class Progress:
    """One look at a migration in flight (or done)."""

    phase: str  # "disks", "memory", "done"
    status: str
    disk_done: int = 0
    disk_total: int = 0
    ram_transferred: int = 0
    ram_remaining: int = 0
    ram_total: int = 0
    rate_mbps: float = 0.0
    expected_downtime_ms: int | None = None
    downtime_ms: int | None = None
    total_ms: int | None = None
    passes: int = 0


ProgressSink = Callable[[Progress], None]


def _ignore(_progress: Progress) -> None:
    return None


# --- the destination ----------------------------------------------------------------------------


def listen(monitor: Monitor, host: str, nbd_port: int, migrate_port: int, exports: Sequence[Export], *,
           postcopy: bool = False) -> None:  # fmt: skip
    """Export `exports` over NBD on host:nbd_port and accept the migration on host:migrate_port."""
    capabilities = [{"capability": "late-block-activate", "state": True}]
    if postcopy:
        capabilities.append({"capability": "postcopy-ram", "state": True})
    try:
        monitor.execute("migrate-set-capabilities", {"capabilities": capabilities})
    except ToolError as exc:
        if postcopy and "ostcopy is not supported" in str(exc):
            raise HostCapabilityError(
                "post-copy is not possible on the destination: QEMU's user there may not use userfaultfd",
                hint="move without --postcopy, or allow it there: sysctl vm.unprivileged_userfaultfd=1",
            ) from None
        raise
    address = {"type": "inet", "data": {"host": host, "port": str(nbd_port)}}
    monitor.execute("nbd-server-start", {"addr": address})
    for export in exports:
        monitor.execute("block-export-add", {"type": "nbd", "id": TARGET_PREFIX + export.node,
                                             "node-name": export.node, "name": export.name,
                                             "writable": True})  # fmt: skip
    monitor.execute("migrate-incoming", {"uri": f"tcp:{_host(host)}:{migrate_port}"})


def activate(monitor: Monitor, *, timeout: float = 30.0) -> None:
    """After the source said the migration completed: stop exporting, then run the guest here (one
    connection: the guest is paused until this returns)."""

    async def work(execute: Execute) -> None:
        deadline = time.monotonic() + timeout
        while (status := _status(await execute("query-migrate", None))) != "completed":
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise ToolError(f"the incoming migration is {status}, not completed: this side cannot run it")
            await asyncio.sleep(FAST_POLL)
        await execute("nbd-server-stop", None)
        await execute("cont", None)

    monitor.in_session(work)


# --- the source ---------------------------------------------------------------------------------


def mirror(monitor: Monitor, host: str, port: int, disks: dict[str, Export], *, full: Sequence[str] = (),
           progress: ProgressSink = _ignore, timeout: float = MIRROR_TIMEOUT) -> None:  # fmt: skip
    """Mirror each source node of `disks` into its destination export, until every mirror is ready
    (from then on each guest write goes to both sides). Nodes in `full` are copied whole; the
    others only their top layer (the destination has the same image below it)."""
    for node, export in disks.items():
        target = TARGET_PREFIX + node
        server = {"type": "inet", "host": host, "port": str(port)}
        monitor.execute("blockdev-add", {"driver": "nbd", "node-name": target, "export": export.name,
                                         "server": server})  # fmt: skip
        monitor.execute("blockdev-mirror", {"job-id": target, "device": node, "target": target,
                                            "sync": "full" if node in full else "top",
                                            "copy-mode": "write-blocking"})  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        jobs = _mirrors(monitor, disks)
        done, total = sum(j.get("offset", 0) for j in jobs), sum(j.get("len", 0) for j in jobs)
        progress(Progress("disks", "active", disk_done=done, disk_total=total))
        failed = [j for j in jobs if j.get("status") in ("aborting", "concluded", "null")]
        if failed or len(jobs) < len(disks):
            raise ToolError(f"mirroring a disk to the destination failed ({_why_jobs(jobs, disks)})")
        if all(j.get("ready") for j in jobs):
            return
        if time.monotonic() > deadline:
            raise ToolError(f"the disks were not mirrored within {timeout:g} s")
        time.sleep(POLL)


def paused_copy(accel: str) -> bool:
    """Whether a VM under `accel` has its RAM copied paused (see the module's docstring)."""
    return accel == "tcg"


def migrate(monitor: Monitor, host: str, port: int, *, downtime_ms: int, postcopy: bool = False,
            paused: bool = False, progress: ProgressSink = _ignore,
            timeout: float = MIGRATE_TIMEOUT) -> Progress:  # fmt: skip
    """Migrate RAM and device state to host:port; the last Progress (status "completed"). With
    `paused`, the guest is paused first (`abort_source` lets it go on should the move fail)."""
    capabilities = [{"capability": "auto-converge", "state": True}, {"capability": "events", "state": True}]
    if postcopy:
        capabilities.append({"capability": "postcopy-ram", "state": True})
    monitor.execute("migrate-set-capabilities", {"capabilities": capabilities})
    monitor.execute("migrate-set-parameters", {"downtime-limit": downtime_ms, "max-bandwidth": 0})

    async def work(execute: Execute) -> Progress:
        if paused:
            await execute("stop", None)
        await execute("migrate", {"uri": f"tcp:{_host(host)}:{port}"})
        deadline, switched, shown = time.monotonic() + timeout, False, 0.0
        while True:
            seen = _progress(_dict(await execute("query-migrate", None), "query-migrate"))
            if seen.status in DONE:
                progress(seen)
                if seen.status == "completed":
                    return seen
                raise ToolError(f"the migration {seen.status}: the destination stopped taking it")
            if time.monotonic() - shown >= SHOW_EVERY:  # the end is seen within FAST_POLL
                progress(seen)
                shown = time.monotonic()
            if postcopy and not switched and seen.passes >= POSTCOPY_AFTER:
                await execute("migrate-start-postcopy", None)
                switched = True
            if time.monotonic() > deadline:
                raise ToolError(f"the migration did not converge within {timeout:g} s")
            await asyncio.sleep(FAST_POLL)

    return monitor.in_session(work)


def complete_mirrors(monitor: Monitor, nodes: Sequence[str], *, timeout: float = 60.0) -> None:
    """With the source paused: each mirror's last pass, then its target dropped (one connection)."""
    targets = [TARGET_PREFIX + node for node in nodes]

    async def work(execute: Execute) -> None:
        for target in targets:
            await execute("block-job-cancel", {"device": target})
        deadline = time.monotonic() + timeout
        while any(isinstance(j, dict) and j.get("device") in targets
                  for j in _list(await execute("query-block-jobs", None))):  # fmt: skip
            if time.monotonic() > deadline:
                raise ToolError(f"the disk mirrors did not finish within {timeout:g} s")
            await asyncio.sleep(FAST_POLL)
        present = {n.get("node-name") for n in _list(await execute("query-named-block-nodes", {"flat": True}))
                   if isinstance(n, dict)}  # fmt: skip
        for target in targets:
            if target in present:
                await execute("blockdev-del", {"node-name": target})

    monitor.in_session(work)


def abort_source(monitor: Monitor, nodes: Sequence[str]) -> None:
    """Undo a migration that has not switched over: cancel it and the mirrors, drop their targets,
    and let the guest run on here. Each step is tried whatever the one before did."""
    cancels = [("block-job-cancel", {"device": TARGET_PREFIX + n, "force": True}) for n in nodes]
    for command, arguments in [("migrate_cancel", None), *cancels]:
        try:
            monitor.execute(command, arguments)
        except ToolError as exc:
            log.debug("abort: %s", exc)
    try:
        _wait_jobs_gone(monitor, nodes, 30.0)
    except ToolError as exc:
        log.warning("abort: %s", exc)
    _drop_targets(monitor, nodes)
    if monitor.query_status() != "running":
        monitor.cont()


def _drop_targets(monitor: Monitor, nodes: Sequence[str]) -> None:
    present = set(monitor.block_nodes())
    for node in nodes:
        if TARGET_PREFIX + node in present:
            try:
                monitor.execute("blockdev-del", {"node-name": TARGET_PREFIX + node})
            except ToolError as exc:
                log.warning("could not drop the mirror target of %s: %s", node, exc)


def _wait_jobs_gone(monitor: Monitor, nodes: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _mirrors(monitor, {n: Export(n, "") for n in nodes}):
        if time.monotonic() > deadline:
            raise ToolError(f"the disk mirrors did not finish within {timeout:g} s")
        time.sleep(POLL)


def _mirrors(monitor: Monitor, disks: dict[str, Export]) -> list[dict[str, Any]]:
    wanted = {TARGET_PREFIX + node for node in disks}
    jobs = monitor.execute("query-block-jobs")
    if not isinstance(jobs, list):
        return []
    return [j for j in jobs if isinstance(j, dict) and j.get("device") in wanted]


def _why_jobs(jobs: list[dict[str, Any]], disks: dict[str, Export]) -> str:
    if len(jobs) < len(disks):
        return "a mirror job ended early: the destination may have gone"
    return "; ".join(f"{j.get('device')}: {j.get('status')} {j.get('error', '')}".strip() for j in jobs)


def _progress(answer: dict[str, Any]) -> Progress:
    ram = answer.get("ram") or {}
    return Progress(
        "done" if answer.get("status") == "completed" else "memory",
        str(answer.get("status", "none")),
        ram_transferred=int(ram.get("transferred", 0)),
        ram_remaining=int(ram.get("remaining", 0)),
        ram_total=int(ram.get("total", 0)),
        rate_mbps=float(ram.get("mbps", 0.0)),
        expected_downtime_ms=answer.get("expected-downtime"),
        downtime_ms=answer.get("downtime"),
        total_ms=answer.get("total-time"),
        passes=int(ram.get("dirty-sync-count", 0)),
    )


def _status(answer: object) -> str:
    return str(_dict(answer, "query-migrate").get("status", "none"))


def _list(answer: object) -> list[Any]:
    return answer if isinstance(answer, list) else []


def _dict(answer: object, command: str) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise ToolError(f"unexpected answer to {command}: {answer!r}")
    return answer


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
