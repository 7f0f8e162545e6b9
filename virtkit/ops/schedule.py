"""When an instance's snapshots are taken by schedule, and how long snapshots are kept (pure).

The instance's settings (`virtkit set NAME KEY=VALUE`; an empty value removes one)::

    snapshots.schedule          @hourly, @daily, @weekly, @monthly, @yearly, or a 5-field cron line
                                "MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK" (e.g. "0 */6 * * *")
    snapshots.expiry            how long a scheduled snapshot is kept: 30m, 12h, 7d, 2w, 1w3d
                                (no expiry: kept until deleted)
    snapshots.pattern           its name, a strftime pattern (default auto-%Y%m%d-%H%M)
    snapshots.schedule.stopped  true: stopped instances are snapshotted too (default false, as in
                                Incus: a stopped instance does not change)

Cron fields take what cron(8) takes: `*`, numbers, ranges `1-5`, steps `*/15` and `0-30/10`,
lists `1,15`, month and day names (`jan`, `mon`); day-of-week 0 or 7 is Sunday; when both
day-of-month and day-of-week are restricted, a day matching either fires, as in cron. Times are
the host's local time (as cron's), unless a `tz` is given (tests use UTC).

A schedule is applied by `virtkit snapshot prune` (ops/prune.py): a snapshot is due when one of
the schedule's times has passed since the last scheduled snapshot (or, before the first one,
since the schedule was set). However many times were missed, one snapshot is taken, as anacron does.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

from virtkit.errors import SpecError
from virtkit.model import validate_name

# setting -> the record.config key it is kept under
SETTINGS = {
    "snapshots.schedule": "snapshots_schedule",
    "snapshots.expiry": "snapshots_expiry",
    "snapshots.pattern": "snapshots_pattern",
    "snapshots.schedule.stopped": "snapshots_schedule_stopped",
}
SINCE = "snapshots_schedule_since"  # config: when the schedule was set (seconds since the epoch)
DEFAULT_PATTERN = "auto-%Y%m%d-%H%M"
MACROS = {
    "@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *",
}  # fmt: skip
SEARCH_DAYS = 8 * 366 + 1  # a 29 February every four years, with 2100 in between
SCHEDULE_HINT = 'e.g. @daily, or a cron line "0 */6 * * *" (minute hour day-of-month month day-of-week)'
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_EXPIRY = 100 * 366 * 86400
_DURATION = re.compile(r"(?:[0-9]{1,6}[smhdw])+")
_PART = re.compile(r"([0-9]{1,6})([smhdw])")
_DIRECTIVES = set("YmdHMSjyUWuwGV%")  # the numeric ones: a name is lowercase letters and digits
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] means low + i


_FIELDS = (
    _Field("minute", 0, 59), _Field("hour", 0, 23), _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS), _Field("day-of-week", 0, 7, _DAYS),
)  # fmt: skip


@dataclass(frozen=True)
class Schedule:
    """A parsed cron schedule: the values each field allows."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 is Sunday
    any_day: bool  # day-of-month was "*"
    any_weekday: bool  # day-of-week was "*"

    def day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        by_date, by_weekday = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return by_date and by_weekday
        return by_date or by_weekday

    def next_after(self, moment: float, tz: dt.tzinfo | None = None) -> float | None:
        """The first time this schedule fires strictly after `moment` (seconds since the epoch), in
        local time or `tz`; None if it never does within SEARCH_DAYS."""
        first = dt.datetime.fromtimestamp(moment, tz).date()
        for offset in range(SEARCH_DAYS):
            day = first + dt.timedelta(days=offset)
            if not self.day_matches(day):
                continue
            for hour in self.hours:
                for minute in self.minutes:
                    fires = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).timestamp()
                    if fires > moment:
                        return fires
        return None


def parse_schedule(text: str) -> Schedule:
    """A schedule from its text (see the module docstring); SpecError saying what is wrong."""
    line = MACROS.get(text.strip().lower(), text.strip())
    if line.startswith("@"):
        raise SpecError(f"invalid snapshots.schedule {text!r}: unknown {line.split()[0]!r}",
                        hint=f"one of {', '.join(MACROS)}, or {SCHEDULE_HINT}")  # fmt: skip
    words = line.split()
    if len(words) != len(_FIELDS):
        raise SpecError(f"invalid snapshots.schedule {text!r}: {len(words)} fields, not 5",
                        hint=SCHEDULE_HINT)  # fmt: skip
    values = [_values(text, field, word) for field, word in zip(_FIELDS, words, strict=True)]
    schedule = Schedule(
        text=text.strip(), minutes=tuple(sorted(values[0])), hours=tuple(sorted(values[1])),
        days=frozenset(values[2]), months=frozenset(values[3]),
        weekdays=frozenset(day % 7 for day in values[4]),
        any_day=words[2] == "*", any_weekday=words[4] == "*",
    )  # fmt: skip
    if schedule.next_after(dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp(), dt.UTC) is None:
        raise SpecError(f"invalid snapshots.schedule {text!r}: it never fires (no such day)",
                        hint=SCHEDULE_HINT)  # fmt: skip
    return schedule


def _values(text: str, field: _Field, word: str) -> set[int]:
    """The values one cron field allows."""
    found: set[int] = set()
    for item in word.lower().split(","):
        span, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                low, high = field.low, field.high
            elif "-" in span:
                start, _, end = span.partition("-")
                low, high = _number(field, start), _number(field, end)
            else:
                low = _number(field, span)
                high = field.high if step_text else low
        except ValueError:
            raise SpecError(f"invalid snapshots.schedule {text!r}: bad {field.name} {item!r}",
                            hint=SCHEDULE_HINT) from None  # fmt: skip
        if not field.low <= low <= high <= field.high or step < 1:
            raise SpecError(
                f"invalid snapshots.schedule {text!r}: {field.name} {item!r} is outside "
                f"{field.low}-{field.high}", hint=SCHEDULE_HINT,
            )  # fmt: skip
        found.update(range(low, high + 1, step))
    return found


def _number(field: _Field, text: str) -> int:
    if text in field.names:
        return field.low + field.names.index(text)
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


def parse_duration(text: str, *, what: str = "snapshots.expiry") -> int:
    """Seconds in a duration such as 30m, 12h, 7d, 2w or 1w3d (units s, m, h, d, w)."""
    word = text.strip().lower()
    hint = "e.g. 30m, 12h, 7d, 2w or 1w3d (s: seconds, m: minutes, h: hours, d: days, w: weeks)"
    if not _DURATION.fullmatch(word):
        raise SpecError(f"invalid {what} {text!r}: expected a duration", hint=hint)
    seconds = sum(int(count) * UNITS[unit] for count, unit in _PART.findall(word))
    if not 0 < seconds <= MAX_EXPIRY:
        raise SpecError(f"invalid {what} {text!r}: more than 0 and at most 100 years, please", hint=hint)
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as parse_duration reads it, largest units first: 1w3d, 12h, 90s -> 1m30s."""
    left, parts = round(seconds), []
    for unit in ("w", "d", "h", "m", "s"):
        count, left = divmod(left, UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def snapshot_name(pattern: str, moment: float, tz: dt.tzinfo | None = None) -> str:
    """The name `pattern` gives a snapshot taken at `moment`; SpecError if it is not a valid name."""
    for directive in re.findall(r"%(.?)", pattern.replace("%%", "")):
        if directive not in _DIRECTIVES:
            raise SpecError(
                f"invalid snapshots.pattern {pattern!r}: %{directive} is not allowed",
                hint="numeric fields only (%Y %m %d %H %M %S %j %y %U %W %u %w): names are lowercase",
            )
    name = dt.datetime.fromtimestamp(moment, tz).strftime(pattern)
    return validate_name(name, what=f"snapshot name made by snapshots.pattern {pattern!r}")


def check_setting(key: str, value: str) -> str:
    """The value to keep for setting `key` (one of SETTINGS), checked; "" removes it."""
    if not value:
        return ""
    if key == "snapshots.schedule":
        return parse_schedule(value).text
    if key == "snapshots.expiry":
        parse_duration(value)
        return value.strip().lower()
    if key == "snapshots.pattern":
        snapshot_name(value, dt.datetime(2026, 12, 31, 23, 59, 58).timestamp())
        return value
    if value.lower() in _TRUE + _FALSE:
        return "true" if value.lower() in _TRUE else "false"
    raise SpecError(f"invalid {key} {value!r}: expected true or false")


@dataclass(frozen=True)
class Policy:
    """An instance's snapshot settings, parsed from its record's config."""

    schedule: Schedule | None = None
    expiry: int | None = None  # seconds
    pattern: str = DEFAULT_PATTERN
    stopped: bool = False
    since: float | None = None  # when the schedule was set

    @classmethod
    def of(cls, config: Mapping[str, str]) -> Policy:
        """From an instance's config (SpecError if a value was damaged since it was set)."""
        schedule = config.get(SETTINGS["snapshots.schedule"])
        expiry = config.get(SETTINGS["snapshots.expiry"])
        since = config.get(SINCE)
        return cls(
            schedule=parse_schedule(schedule) if schedule else None,
            expiry=parse_duration(expiry) if expiry else None,
            pattern=config.get(SETTINGS["snapshots.pattern"]) or DEFAULT_PATTERN,
            stopped=config.get(SETTINGS["snapshots.schedule.stopped"]) == "true",
            since=float(since) if since and since.replace(".", "", 1).isdigit() else None,
        )
