"""Snapshot schedules, expiry durations and name patterns (ops/schedule.py, pure): what each
accepts, when a schedule fires (in UTC here, and across a daylight-saving change), and the clear
errors for what is wrong; `virtkit set` keeping them without touching the instance's runtime."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.drivers.fake import FakeDriver
from virtkit.errors import SpecError
from virtkit.images.staged import DISK, StagedImage
from virtkit.model import InstanceKind
from virtkit.ops.images import add_staged
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.ops.schedule import (
    SINCE,
    Policy,
    check_setting,
    format_duration,
    parse_duration,
    parse_schedule,
    snapshot_name,
)
from virtkit.ops.settings import Settings, parse_assignments
from virtkit.store import SqliteStore, open_store

UTC = dt.UTC


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with open_store(tmp_path / "root") as opened:
        yield opened


def at(text: str, tz: dt.tzinfo = UTC) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def fires(line: str, start: str, count: int = 4, tz: dt.tzinfo = UTC) -> list[str]:
    """The first `count` times `line` fires after `start`, as ISO strings in `tz`."""
    schedule, moment, found = parse_schedule(line), at(start, tz), []
    for _ in range(count):
        moment = schedule.next_after(moment, tz) or 0.0
        found.append(dt.datetime.fromtimestamp(moment, tz).strftime("%Y-%m-%d %H:%M %a"))
    return found


def test_macros() -> None:
    # 2026-01-05 is a Monday
    assert fires("@hourly", "2026-01-05 10:30", 2) == ["2026-01-05 11:00 Mon", "2026-01-05 12:00 Mon"]
    assert fires("@daily", "2026-01-05 10:30", 2) == ["2026-01-06 00:00 Tue", "2026-01-07 00:00 Wed"]
    assert fires("@weekly", "2026-01-05 10:30", 2) == ["2026-01-11 00:00 Sun", "2026-01-18 00:00 Sun"]
    assert fires("@monthly", "2026-01-05 10:30", 2) == ["2026-02-01 00:00 Sun", "2026-03-01 00:00 Sun"]
    assert fires("@YEARLY", "2026-01-05 10:30", 1) == ["2027-01-01 00:00 Fri"]
    assert fires("@hourly", "2026-01-05 11:00", 1) == ["2026-01-05 12:00 Mon"]  # strictly after


def test_cron_fields() -> None:
    assert fires("0 */6 * * *", "2026-01-05 10:30") == [
        "2026-01-05 12:00 Mon", "2026-01-05 18:00 Mon", "2026-01-06 00:00 Tue", "2026-01-06 06:00 Tue",
    ]  # fmt: skip
    assert fires("15,45 9-10 * * mon-fri", "2026-01-09 10:50", 3) == [
        "2026-01-12 09:15 Mon", "2026-01-12 09:45 Mon", "2026-01-12 10:15 Mon",
    ]  # fmt: skip
    assert fires("0-30/15 0 * * *", "2026-01-05 00:00", 3) == [
        "2026-01-05 00:15 Mon", "2026-01-05 00:30 Mon", "2026-01-06 00:00 Tue",
    ]  # fmt: skip
    assert fires("30 2 * feb 7", "2026-01-05 00:00", 2) == ["2026-02-01 02:30 Sun", "2026-02-08 02:30 Sun"]
    # both day fields restricted: either one fires, as in cron (the 13th, and every Friday)
    assert fires("0 0 13 * 5", "2026-02-01 00:00", 4) == [
        "2026-02-06 00:00 Fri", "2026-02-13 00:00 Fri", "2026-02-20 00:00 Fri", "2026-02-27 00:00 Fri",
    ]  # fmt: skip
    assert fires("0 0 13 * 5", "2026-03-01 00:00", 2) == ["2026-03-06 00:00 Fri", "2026-03-13 00:00 Fri"]
    assert fires("0 0 29 2 *", "2026-01-01 00:00", 2) == ["2028-02-29 00:00 Tue", "2032-02-29 00:00 Sun"]


def test_local_time_across_a_daylight_saving_change() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone data")
    # 2026-03-29: clocks go from 02:00 to 03:00 in Paris; @daily stays at local midnight
    assert fires("@daily", "2026-03-28 12:00", 2, paris) == ["2026-03-29 00:00 Sun", "2026-03-30 00:00 Mon"]
    daily = parse_schedule("@daily")
    first, second = (
        daily.next_after(at("2026-03-28 12:00", paris), paris),
        daily.next_after(at("2026-03-29 12:00", paris), paris),
    )
    assert first is not None and second is not None and second - first == 23 * 3600  # a short day


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("", "0 fields, not 5"),
        ("0 * * *", "4 fields, not 5"),
        ("@often", "unknown '@often'"),
        ("61 * * * *", "minute '61' is outside 0-59"),
        ("0 24 * * *", "hour '24' is outside 0-23"),
        ("0 0 0 * *", "day-of-month '0' is outside 1-31"),
        ("0 0 * 13 *", "month '13' is outside 1-12"),
        ("0 0 * * 8", "day-of-week '8' is outside 0-7"),
        ("*/0 * * * *", "minute '\\*/0' is outside"),
        ("5-1 * * * *", "minute '5-1' is outside"),
        ("x * * * *", "bad minute 'x'"),
        ("0 0 * * funday", "bad day-of-week 'funday'"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_bad_schedules_are_said(line: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle) as err:
        parse_schedule(line)
    assert "invalid snapshots.schedule" in str(err.value) and err.value.hint


def test_durations() -> None:
    assert [parse_duration(t) for t in ("30m", "12h", "7d", "2w", "1w3d", "90s", " 1H ")] == [
        1800, 43200, 604800, 1209600, 864000, 90, 3600,
    ]  # fmt: skip
    assert [format_duration(s) for s in (1800, 864000, 90, 0)] == ["30m", "1w3d", "1m30s", "0s"]
    bad_ones = [("7", "expected a duration"), ("7x", "expected a duration"), ("", "expected"),
                ("-1d", "expected"), ("0m", "more than 0"), ("9999w", "at most 100 years")]  # fmt: skip
    for bad, needle in bad_ones:
        with pytest.raises(SpecError, match=needle):
            parse_duration(bad)


def test_name_patterns() -> None:
    moment = at("2026-01-05 09:07:03")
    assert snapshot_name("auto-%Y%m%d-%H%M", moment, UTC) == "auto-20260105-0907"
    assert snapshot_name("daily-%j", moment, UTC) == "daily-005"
    assert snapshot_name("s%y%m%d%H%M%S", moment, UTC) == "s260105090703"
    with pytest.raises(SpecError, match="%b is not allowed"):
        snapshot_name("auto-%b", moment, UTC)  # Jan: not a valid name
    with pytest.raises(SpecError, match="must start with a letter"):
        snapshot_name("%Y", moment, UTC)
    with pytest.raises(SpecError, match="may only hold"):
        snapshot_name("auto_%Y", moment, UTC)


def test_settings_are_checked_and_normalised() -> None:
    assert check_setting("snapshots.schedule", " @hourly ") == "@hourly"
    assert check_setting("snapshots.expiry", "7D") == "7d"
    assert check_setting("snapshots.pattern", "nightly-%Y%m%d") == "nightly-%Y%m%d"
    assert check_setting("snapshots.schedule.stopped", "Yes") == "true"
    assert check_setting("snapshots.schedule.stopped", "off") == "false"
    assert check_setting("snapshots.schedule", "") == ""
    with pytest.raises(SpecError, match="expected true or false"):
        check_setting("snapshots.schedule.stopped", "maybe")
    policy = Policy.of({"snapshots_schedule": "@daily", "snapshots_expiry": "2w", SINCE: "12.5"})
    assert (policy.expiry, policy.pattern, policy.stopped, policy.since) == (
        1209600,
        "auto-%Y%m%d-%H%M",
        False,
        12.5,
    )
    assert Policy.of({}).schedule is None
    with pytest.raises(SpecError, match=r"invalid snapshots\.schedule"):
        Policy.of({"snapshots_schedule": "bogus"})  # a hand-edited store


def test_set_keeps_snapshot_settings_without_touching_the_runtime(tmp_path: Path, store: SqliteStore) -> None:
    root, fake = tmp_path / "root", FakeDriver()

    def make(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(b"disk")
        return StagedImage("vmonly", ["vm"], "x86_64", "qcow2", "t", files={DISK: "disk.qcow2"})

    add_staged(root, store, make, alias="vmonly")
    life = Lifecycle(root, store, drivers=lambda kind: fake)
    life.create(Request(image="vmonly", name="web1", kind=InstanceKind.VM))
    life.start("web1")
    settings = Settings(root, store, drivers=lambda kind: fake)
    runtime = life.runtime("web1")
    fake.calls.clear()
    words = ["snapshots.schedule=0 */6 * * *", "snapshots.expiry=7d", "snapshots.schedule.stopped=yes"]
    record, now = settings.set("web1", parse_assignments(words))
    assert now is True and fake.calls == []  # at once, whatever its state: nothing regenerated or updated
    assert life.runtime("web1") == runtime
    config = record.config
    kept = [config[key] for key in ("snapshots_schedule", "snapshots_expiry", "snapshots_schedule_stopped")]
    assert kept == ["0 */6 * * *", "7d", "true"]
    assert float(config[SINCE]) > 0
    record, _ = settings.set("web1", {"snapshots.schedule": ""})
    assert "snapshots_schedule" not in record.config and SINCE not in record.config
    with pytest.raises(SpecError, match=r"invalid snapshots\.expiry '7x'"):
        settings.set("web1", {"snapshots.expiry": "7x"})
    with pytest.raises(SpecError, match=r"unknown setting 'snapshots\.often'"):
        parse_assignments(["snapshots.often=1"])
