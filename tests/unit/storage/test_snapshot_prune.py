"""`snapshot prune` on a fake clock, over the FakeDriver and a fake backend: simulated hours, days
and weeks of a schedule take exactly the snapshots that fall due and delete exactly the expired
ones; catch-up, stopped instances, name clashes, hand-made snapshots and per-instance errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.unit.storage.test_snapshot_ops import FakeBackend
from virtkit.drivers.base import InstancePaths
from virtkit.drivers.fake import FakeDriver
from virtkit.errors import NotFoundError, SpecError
from virtkit.model import InstanceKind, InstanceRecord
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.ops.prune import Pruner
from virtkit.ops.settings import changed_record
from virtkit.ops.snapshots import BackendFor, Snapshots
from virtkit.storage.snapshots import Backend
from virtkit.store import SqliteStore

UTC = dt.UTC
HOUR, DAY = 3600.0, 86400.0


class Clock:
    """A fake clock: it reads `t`, which only the test moves."""

    def __init__(self, start: str) -> None:
        self.t = at(start)

    def __call__(self) -> float:
        return self.t

    def to(self, when: str) -> None:
        self.t = at(when)


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture
def fake() -> FakeDriver:
    return FakeDriver(InstanceKind.CONTAINER)


@pytest.fixture
def clock() -> Clock:
    return Clock("2026-01-05 10:30")  # a Monday


def backends_of(fake: FakeDriver) -> BackendFor:
    def backends(record: InstanceRecord, paths: InstancePaths, live: bool) -> Backend:
        return FakeBackend(paths.dir, fake.calls)

    return backends


@pytest.fixture
def pruner(root: Path, store: SqliteStore, fake: FakeDriver, clock: Clock) -> Pruner:
    return Pruner(root, store, drivers=lambda kind: fake, backends=backends_of(fake), now=clock, tz=UTC)


@pytest.fixture
def snaps(root: Path, store: SqliteStore, fake: FakeDriver, clock: Clock) -> Snapshots:
    return Snapshots(root, store, drivers=lambda kind: fake, backends=backends_of(fake), now=clock)


def make(life: Lifecycle, store: SqliteStore, clock: Clock, name: str = "c1", *, running: bool = True,
         **settings: str) -> None:  # fmt: skip
    """An instance with the snapshot settings given (`snapshots_expiry="3h"` for snapshots.expiry=3h),
    set at the clock's time."""
    life.create(Request(image="tiny", name=name, kind=InstanceKind.CONTAINER))
    (life.paths(name).dir / "state").write_text("one\n")
    if running:
        life.start(name)
    record = store.get(InstanceRecord, name)
    wanted = {key.replace("_", "."): value for key, value in settings.items()}
    store.put(changed_record(record, wanted, now=clock))


def names(snaps: Snapshots, instance: str = "c1") -> list[str]:
    return [snapshot.name for snapshot in snaps.list(instance)]


def run_for(pruner: Pruner, clock: Clock, hours: float, step: float = 600) -> tuple[list[str], list[str]]:
    """Prune every `step` seconds for `hours`: what was taken, what was deleted, in order."""
    taken: list[str] = []
    deleted: list[str] = []
    end = clock.t + hours * HOUR
    while clock.t < end:
        clock.t += step
        for result in pruner.prune():
            assert result.error is None, result.error
            taken += [record.name for record in result.created]
            deleted += [record.name for record in result.deleted]
    return taken, deleted


def test_hourly_with_expiry_over_half_a_day(
    life: Lifecycle, store: SqliteStore, clock: Clock, pruner: Pruner, snaps: Snapshots
) -> None:
    make(life, store, clock, snapshots_schedule="@hourly", snapshots_expiry="3h")
    first = pruner.prune("c1")[0]
    assert (first.created, first.deleted, first.next_at) == ([], [], at("2026-01-05 11:00"))  # not before
    taken, deleted = run_for(pruner, clock, 12)  # to 22:30, a prune every 10 minutes
    assert taken == [f"auto-20260105-{hour:02d}00" for hour in range(11, 23)]
    assert deleted == [f"auto-20260105-{hour:02d}00" for hour in range(11, 20)]  # each 3 h after it was taken
    assert names(snaps) == ["auto-20260105-2000", "auto-20260105-2100", "auto-20260105-2200"]
    kept = snaps.get("c1", "auto-20260105-2200")
    assert (kept.scheduled, kept.created_at, kept.expires_at) == (
        True,
        at("2026-01-05 22:00"),
        at("2026-01-06 01:00"),
    )
    assert kept.live is True and kept.stateful is False


def test_daily_and_weekly_over_three_weeks(
    life: Lifecycle, store: SqliteStore, clock: Clock, pruner: Pruner, snaps: Snapshots
) -> None:
    make(life, store, clock, "d1", snapshots_schedule="@daily", snapshots_expiry="1w",
         snapshots_pattern="daily-%Y%m%d")  # fmt: skip
    make(life, store, clock, "w1", snapshots_schedule="@weekly", snapshots_pattern="weekly-%Y%m%d")
    make(life, store, clock, "s1", snapshots_schedule="0 */6 * * *", snapshots_expiry="1d")
    taken, deleted = run_for(pruner, clock, 21 * 24, step=HOUR)  # to Monday 2026-01-26 10:30
    assert [n for n in taken if n.startswith("weekly")] == [
        "weekly-20260111",
        "weekly-20260118",
        "weekly-20260125",
    ]
    assert names(snaps, "w1") == ["weekly-20260111", "weekly-20260118", "weekly-20260125"]  # no expiry: kept
    daily = [n for n in taken if n.startswith("daily")]
    assert len(daily) == 21 and daily[0] == "daily-20260106" and daily[-1] == "daily-20260126"
    # taken at the first prune after midnight (00:30), each deleted at the prune a week later
    assert names(snaps, "d1") == [f"daily-202601{day}" for day in range(20, 27)]
    assert snaps.get("d1", "daily-20260126").created_at == at("2026-01-26 00:30")
    six_hourly = [n for n in taken if n.startswith("auto")]
    assert len(six_hourly) == 2 + 20 * 4 + 2  # the 5th from 12:00 .. the 26th to 06:00
    assert names(snaps, "s1") == ["auto-20260125-1230", "auto-20260125-1830", "auto-20260126-0030",
                                  "auto-20260126-0630"]  # fmt: skip
    assert sorted(deleted) == sorted(
        set(taken) - {*names(snaps, "d1"), *names(snaps, "w1"), *names(snaps, "s1")}
    )


def test_missed_times_make_one_snapshot(
    life: Lifecycle, store: SqliteStore, clock: Clock, pruner: Pruner, snaps: Snapshots
) -> None:
    make(life, store, clock, snapshots_schedule="@hourly")
    clock.to("2026-01-05 17:42")  # nobody ran prune for seven hours
    done = pruner.prune("c1")[0]
    assert [r.name for r in done.created] == ["auto-20260105-1742"] and done.next_at == at("2026-01-05 18:00")
    assert pruner.prune("c1")[0].created == []
    clock.to("2026-01-05 18:00")
    assert [r.name for r in pruner.prune("c1")[0].created] == ["auto-20260105-1800"]


def test_the_first_is_due_after_the_schedule_was_set(
    life: Lifecycle, store: SqliteStore, clock: Clock, pruner: Pruner
) -> None:
    clock.to("2026-01-05 10:59:30")
    make(life, store, clock, snapshots_schedule="@hourly")  # the instance is older than the schedule
    clock.to("2026-01-05 11:00:05")
    assert len(pruner.prune("c1")[0].created) == 1
    record = store.get(InstanceRecord, "c1")
    store.put(changed_record(record, {"snapshots.schedule": "@daily"}, now=clock))  # set again: from now
    clock.to("2026-01-05 23:59")
    assert pruner.prune("c1")[0].created == []
    clock.to("2026-01-06 00:00")
    assert len(pruner.prune("c1")[0].created) == 1


def test_stopped_instances_are_skipped_unless_asked(
    life: Lifecycle, store: SqliteStore, clock: Clock, pruner: Pruner, snaps: Snapshots
) -> None:
    make(life, store, clock, "off", running=False, snapshots_schedule="@hourly")
    make(
        life,
        store,
        clock,
        "on",
        running=False,
        snapshots_schedule="@hourly",
        snapshots_schedule_stopped="true",
    )
    clock.to("2026-01-05 11:05")
    off, on = pruner.prune()
    assert (
        off.created == [] and "it is stopped" in off.skipped and "snapshots.schedule.stopped" in off.skipped
    )
    assert [r.name for r in on.created] == ["auto-20260105-1105"] and on.created[0].live is False
    life.start("off")
    clock.to("2026-01-05 11:20")  # started again: the missed snapshot is taken at the next prune
    assert [r.name for r in pruner.prune("off")[0].created] == ["auto-20260105-1120"]


def test_only_expired_snapshots_are_deleted(
    life: Lifecycle, store: SqliteStore, clock: Clock, pruner: Pruner, snaps: Snapshots
) -> None:
    make(life, store, clock)  # no schedule at all
    snaps.create("c1", "keep")
    snaps.create("c1", "short", expiry=HOUR)
    snaps.create("c1", "long", expiry=DAY)
    clock.t += HOUR - 1
    done = pruner.prune("c1")[0]
    assert (done.created, done.deleted, done.next_at) == ([], [], None)
    clock.t += 1
    assert [r.name for r in pruner.prune("c1")[0].deleted] == ["short"]
    clock.t += 2 * DAY
    assert [r.name for r in pruner.prune("c1")[0].deleted] == ["long"]
    assert names(snaps) == ["keep"]


def test_clashing_names_get_a_suffix(
    life: Lifecycle, store: SqliteStore, clock: Clock, pruner: Pruner, snaps: Snapshots
) -> None:
    make(life, store, clock, snapshots_schedule="@hourly", snapshots_pattern="day-%Y%m%d")
    snaps.create("c1", "day-20260105-1")  # taken by hand
    taken, _ = run_for(pruner, clock, 3, step=HOUR)
    assert taken == ["day-20260105", "day-20260105-2", "day-20260105-3"]


def test_one_instance_failing_does_not_stop_the_others(
    life: Lifecycle, store: SqliteStore, clock: Clock, pruner: Pruner, snaps: Snapshots
) -> None:
    make(life, store, clock, "a1", snapshots_schedule="@hourly")
    make(life, store, clock, "b1", snapshots_schedule="@hourly")
    broken = store.get(InstanceRecord, "a1")
    broken.config["snapshots_schedule"] = "every tuesday"  # a hand-edited store
    store.put(broken)
    clock.to("2026-01-05 11:00")
    first, second = pruner.prune()
    assert first.instance == "a1" and isinstance(first.error, SpecError)
    assert "invalid snapshots.schedule 'every tuesday'" in str(first.error)
    assert second.error is None and len(second.created) == 1
    assert first.to_dict()["error"] == first.error.to_dict()
    with pytest.raises(SpecError, match=r"invalid snapshots\.schedule"):
        pruner.prune("a1")  # one instance named: its error is raised
    with pytest.raises(NotFoundError, match="instance 'nope' not found"):
        pruner.prune("nope")
