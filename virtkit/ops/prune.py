"""`virtkit snapshot prune`: take the snapshots an instance's schedule says are due, delete the
expired ones (see ops/schedule.py for the settings, docs/snapshots.md for the rules).

For each instance, holding its lock (so two prunes never both take the same due snapshot):

1. If it has a `snapshots.schedule` and one of its times has passed since the last scheduled
   snapshot (before the first one: since the schedule was set), one snapshot is taken, named by
   `snapshots.pattern` at this moment (`-1`, `-2`, ... added if that name is taken), marked as
   scheduled and expiring `snapshots.expiry` from now. A stopped instance is skipped unless
   `snapshots.schedule.stopped` is true; the snapshot is then taken at the first prune after it
   starts again. Scheduled snapshots are disk-only (a running VM: as after a power cut).
2. Every snapshot of it whose `expires_at` has passed is deleted: the scheduled ones and those
   made with `snapshot create --expiry`. Others are never touched.

The clock (`now`) and the time zone the schedule is read in (`tz`, None: local time) are
injectable: unit tests run days of schedule in a moment on a fake clock.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.drivers.base import get_driver
from virtkit.errors import ConflictError, VirtkitError
from virtkit.model import InstanceRecord, InstanceState, SnapshotRecord, validate_name
from virtkit.ops.lifecycle import DriverFor
from virtkit.ops.schedule import Policy, Schedule, snapshot_name
from virtkit.ops.snapshots import BackendFor, Clock, Snapshots
from virtkit.store import Store

log = logging.getLogger(__name__)

MAX_SUFFIX = 99  # auto-20261202-1400-1 ... -99: more than one a minute is not a schedule


@dataclass
class Pruned:
    """What prune did to one instance: snapshots taken and deleted, when the next scheduled one is
    due (None: no schedule), why a due one was not taken, the error that stopped it."""

    instance: str
    created: list[SnapshotRecord] = field(default_factory=list)
    deleted: list[SnapshotRecord] = field(default_factory=list)
    next_at: float | None = None
    skipped: str = ""
    error: VirtkitError | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "created": [record.model_dump(mode="json") for record in self.created],
            "deleted": [record.model_dump(mode="json") for record in self.deleted],
            "next_at": self.next_at,
            "skipped": self.skipped or None,
            "error": self.error.to_dict() if self.error is not None else None,
        }


class Pruner:
    """`prune` over one state root, on the clock `now`."""

    def __init__(
        self, root: Path, store: Store, drivers: DriverFor = get_driver, backends: BackendFor | None = None,
        now: Clock = time.time, tz: dt.tzinfo | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.drivers = drivers
        self.now = now
        self.tz = tz
        self.snapshots = Snapshots(root, store, drivers, backends, now=now)

    def prune(self, instance: str | None = None) -> list[Pruned]:
        """Apply schedules and expiry to `instance` (its errors raised), or to every instance (None:
        each one's error is kept in its result, and the others are still done)."""
        if instance is not None:
            return [self.prune_one(validate_name(instance))]
        results = []
        for record in sorted(self.store.list(InstanceRecord), key=lambda r: r.name):
            try:
                results.append(self.prune_one(record.name))
            except VirtkitError as exc:
                log.error("pruning the snapshots of %s failed: %s", record.name, exc)
                results.append(Pruned(record.name, error=exc))
        return results

    def prune_one(self, name: str) -> Pruned:
        with self.store.lock("instance", name):
            record = self.store.get(InstanceRecord, name)
            done = Pruned(record.name)
            policy = Policy.of(record.config)
            if policy.schedule is not None:
                self._take_due(record, policy, policy.schedule, done)
            now = self.now()
            for snapshot in self.snapshots.list(record.name):
                if snapshot.expires_at is not None and snapshot.expires_at <= now:
                    done.deleted.append(self.snapshots.delete(record.name, snapshot.name))
                    log.info("%s: deleted snapshot %s (expired)", record.name, snapshot.name)
            return done

    def _take_due(self, record: InstanceRecord, policy: Policy, schedule: Schedule, done: Pruned) -> None:
        """Take the scheduled snapshot if one is due; say when the next one is."""
        now = self.now()
        taken = [s.created_at for s in self.store.list(SnapshotRecord, instance=record.name) if s.scheduled]
        since = max(taken) if taken else policy.since if policy.since is not None else record.created_at
        due = schedule.next_after(since, self.tz)
        done.next_at = schedule.next_after(now, self.tz)
        if due is None or due > now:
            if due is not None:
                done.next_at = due
            return
        state = self.drivers(record.kind).status(record, self.snapshots.paths(record.name)).state
        if state in (InstanceState.STOPPED, InstanceState.ERROR) and not policy.stopped:
            done.skipped = f"it is {state.value} (snapshots.schedule.stopped=true snapshots it all the same)"
            return
        name = self._free(record.name, snapshot_name(policy.pattern, now, self.tz))
        snapshot, _notes = self.snapshots.create(record.name, name, expiry=policy.expiry, scheduled=True)
        done.created.append(snapshot)
        log.info("%s: took scheduled snapshot %s", record.name, snapshot.name)

    def _free(self, instance: str, name: str) -> str:
        """`name`, or the first of name-1, name-2, ... not taken."""
        taken = {snapshot.name for snapshot in self.store.list(SnapshotRecord, instance=instance)}
        for candidate in [name, *(f"{name}-{n}" for n in range(1, MAX_SUFFIX + 1))]:
            if candidate not in taken and len(candidate) <= 63:
                return candidate
        raise ConflictError(
            f"instance {instance!r} already has snapshots {name} to {name}-{MAX_SUFFIX}",
            hint="delete some, or set a snapshots.pattern with seconds (%S)",
        )
