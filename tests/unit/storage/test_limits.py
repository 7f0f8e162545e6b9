"""Volume IO limits: parsed to canonical values, impossible combinations refused before any attach."""

from __future__ import annotations

import pytest

from virtkit.errors import SpecError
from virtkit.storage import limits


@pytest.mark.parametrize(
    ("key", "text", "stored"),
    [
        ("limits.read_iops", "500", "500"),
        ("limits.write_iops", "500iops", "500"),
        ("limits.iops", " 7 IOPS", "7"),
        ("limits.read_bps", "50MiB", str(50 * 1024**2)),
        ("limits.write_bps", "100MB/s", str(100 * 10**6)),
        ("limits.bps", "1048576", "1048576"),
    ],
)
def test_values_are_stored_canonical(key: str, text: str, stored: str) -> None:
    assert limits.parse_value(key, text) == stored


@pytest.mark.parametrize(
    ("key", "text", "words"),
    [
        ("limits.read_iops", "0", "at least 1"),
        ("limits.read_iops", "-5", "operations per second"),
        ("limits.read_iops", "fast", "operations per second"),
        ("limits.read_iops", "1.5", "operations per second"),
        ("limits.read_iops", "٣", "operations per second"),  # a digit, but not an ASCII one
        ("limits.read_iops", str(10**16), "at most"),
        ("limits.read_bps", "0", "at least 1"),
        ("limits.read_bps", "-1M", "negative"),
        ("limits.read_bps", "lots", "expected"),
        ("limits.read_bps", "2PiB", "at most"),
        ("limits.read", "5", "unknown volume setting"),
        ("size", "5G", "unknown volume setting"),
    ],
)
def test_bad_values_are_refused(key: str, text: str, words: str) -> None:
    with pytest.raises(SpecError, match=words):
        limits.parse_value(key, text)


def test_assignments() -> None:
    assert limits.parse_assignments(["limits.read_iops=10", "limits.write_bps=1K"]) == {
        "limits.read_iops": "10",
        "limits.write_bps": "1024",
    }
    for bad, words in [([], "nothing to set"), (["limits.iops"], "KEY=VALUE"), (["=5"], "KEY=VALUE"),
                       (["limits.iops=1", "limits.iops=2"], "twice")]:  # fmt: skip
        with pytest.raises(SpecError, match=words):
            limits.parse_assignments(bad)


def test_totals_exclude_split_limits_of_the_same_unit() -> None:
    limits.check({"limits.iops": "10", "limits.read_bps": "100", "limits.write_bps": "100"})
    limits.check({"limits.read_iops": "10", "limits.bps": "100", "other": "x"})
    with pytest.raises(SpecError, match=r"limits\.iops .* cannot be combined with limits\.write_iops"):
        limits.check({"limits.iops": "10", "limits.write_iops": "5"})
    with pytest.raises(SpecError, match=r"limits\.bps"):
        limits.check({"limits.bps": "10", "limits.read_bps": "5", "limits.write_bps": "5"})
    with pytest.raises(SpecError, match="at least 1"):
        limits.check({"limits.bps": "0"})  # a damaged stored value is caught too


def test_qemu_throttle_limits() -> None:
    config = {"limits.read_iops": "10", "limits.bps": "4096", "other": "x"}
    assert limits.throttle_limits(config) == {"iops-read": 10, "bps-total": 4096}
    assert limits.throttle_limits({}) == {}
    assert limits.limits_of(config) == {"limits.read_iops": "10", "limits.bps": "4096"}
