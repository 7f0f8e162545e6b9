"""storage.free-space: measure the state root, or its nearest existing parent."""

from __future__ import annotations

from pathlib import Path

from virtkit.host import Status
from virtkit.host.space import nearest_existing, probe_space, space_check


def test_existing_root(tmp_path: Path) -> None:
    state = probe_space(tmp_path)
    assert state.root_exists
    assert state.free is not None and state.free > 0
    check = space_check(state, min_free=1)
    assert check.status is Status.PASS
    assert str(tmp_path) in check.summary
    assert "does not exist" not in check.summary


def test_missing_root_measures_parent_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "var/lib/virtkit"
    assert nearest_existing(root) == tmp_path
    state = probe_space(root)
    assert not state.root_exists
    assert state.measured == str(tmp_path)
    check = space_check(state, min_free=1)
    assert check.status is Status.PASS
    assert f"{root} does not exist yet" in check.summary
    assert check.details["root_exists"] is False


def test_below_threshold_warns(tmp_path: Path) -> None:
    check = space_check(probe_space(tmp_path), min_free=1 << 62)
    assert check.status is Status.WARN
    assert "below 4EiB" in check.summary
    assert check.remedy is not None and "--root" in check.remedy
    assert check.details["min_free_bytes"] == 1 << 62
