"""atomic_write: the new content whole, or the old content intact and no temporary file left."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from virtkit.errors import StoreError
from virtkit.store import atomic_write, clean_stale_temps, files


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_writes_bytes_or_text_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "runtime.json"
    atomic_write(target, "héllo")
    assert target.read_bytes() == "héllo".encode()
    assert target.stat().st_mode & 0o777 == 0o600

    old_umask = os.umask(0o077)
    try:
        atomic_write(target, b"\x00\x01", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"\x00\x01"
    assert target.stat().st_mode & 0o777 == 0o644
    assert listing(tmp_path) == ["runtime.json"]


def test_a_long_name_still_fits(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 250)
    atomic_write(target, "x")
    assert target.read_text() == "x"


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_a_failure_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "config"
    atomic_write(target, "old")

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(StoreError) as error:
        atomic_write(target, "new" * 1000)
    monkeypatch.undo()
    assert error.value.message == f"cannot write {target}: No space left on device"
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["config"]


def test_an_interrupt_mid_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config"
    atomic_write(target, "old")

    def interrupted(_fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["config"]


def test_a_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot write .*: No such file or directory"):
        atomic_write(tmp_path / "nope" / "config", "x")
    assert listing(tmp_path) == []


def test_stale_temporary_files_are_recognised_and_removed(tmp_path: Path) -> None:
    gone = dead_pid()
    stale = tmp_path / files.temp_name("config", pid=gone)
    live = tmp_path / files.temp_name("config")  # this process: a write in progress
    old_live = tmp_path / files.temp_name("other")
    unrelated = tmp_path / ".config.tmp"
    for path in (stale, live, old_live, unrelated):
        path.write_text("partial")
    hours_ago = time.time() - 2 * files.STALE_AGE
    os.utime(old_live, (hours_ago, hours_ago))

    assert sorted(clean_stale_temps(tmp_path)) == sorted([stale, old_live])
    assert listing(tmp_path) == sorted([live.name, unrelated.name])


def test_atomic_write_removes_the_stale_temporaries_of_its_target(tmp_path: Path) -> None:
    gone = dead_pid()
    mine = tmp_path / files.temp_name("config", pid=gone)
    theirs = tmp_path / files.temp_name("other", pid=gone)
    mine.write_text("partial")
    theirs.write_text("partial")

    atomic_write(tmp_path / "config", "whole")
    assert listing(tmp_path) == sorted(["config", theirs.name])
