"""Lifecycle events (ops/events.py): emitted as JSON lines, followed with a type filter, across
rotation, with heartbeats; concurrent writers never lose or mix lines."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtkit.ops import events


@pytest.fixture
def root(tmp_path: Path) -> Path:
    made = tmp_path / "root"
    made.mkdir()
    return made


def _lines(root: Path) -> list[dict[str, Any]]:
    found = []
    for name in (events.FILE + ".1", events.FILE):
        path = root / name
        if path.exists():
            found += [json.loads(line) for line in path.read_text().splitlines()]
    return found


class Follower:
    """follow() in a thread, collecting what it yields until stopped."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.stop = threading.Event()
        self.seen: list[dict[str, Any]] = []
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(root, options), daemon=True)
        self._thread.start()
        assert self.started.wait(5)
        time.sleep(events.POLL * 2)  # the file opened and its end found before the test writes

    def _run(self, root: Path, options: dict[str, Any]) -> None:
        self.started.set()
        for event in events.follow(root, stop=self.stop, **options):
            self.seen.append(event)

    def until(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.seen

    def close(self) -> None:
        self.stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive(), "follow() did not end when asked to stop"


@pytest.fixture
def follower(root: Path) -> Iterator[Any]:
    made: list[Follower] = []

    def start(**options: Any) -> Follower:
        made.append(Follower(root, **options))
        return made[-1]

    yield start
    for one in made:
        one.close()


def test_emit_writes_one_json_line(root: Path) -> None:
    before = time.time()
    events.emit(root, "instance", "started", "web1", pid=42)
    events.emit(root, "operation", "success", "web1")
    first, second = _lines(root)
    assert (first["type"], first["action"], first["target"], first["details"]) == (
        "instance",
        "started",
        "web1",
        {"pid": 42},
    )
    assert before <= first["time"] <= time.time()
    assert "details" not in second


def test_emit_never_fails_its_caller(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    events.emit(tmp_path / "missing" / "root", "instance", "started", "web1")  # no such directory
    assert "could not record event" in caplog.text


def test_emit_of_unserializable_detail_is_kept_as_text(root: Path) -> None:
    events.emit(root, "instance", "created", "web1", path=root)
    assert _lines(root)[0]["details"] == {"path": str(root)}


def test_follow_from_the_end_sees_only_new_events(root: Path, follower: Any) -> None:
    events.emit(root, "instance", "created", "old")
    watching = follower()
    events.emit(root, "instance", "started", "new")
    seen = watching.until(1)
    time.sleep(events.POLL * 3)
    assert [(event["action"], event["target"]) for event in seen] == [("started", "new")]


def test_follow_from_the_start(root: Path) -> None:
    for index in range(3):
        events.emit(root, "instance", "created", f"i{index}")
    seen = list(events.follow(root, since_end=False, timeout=0.5))
    assert [event["target"] for event in seen] == ["i0", "i1", "i2"]


def test_follow_waits_for_the_file_to_exist(root: Path, follower: Any) -> None:
    watching = follower()
    events.emit(root, "instance", "created", "first")
    assert [event["target"] for event in watching.until(1)] == ["first"]


def test_type_filter(root: Path, follower: Any) -> None:
    watching = follower(types=frozenset({"operation", "error"}))
    events.emit(root, "instance", "started", "a")
    events.emit(root, "operation", "created", "b")
    events.emit(root, "network", "created", "c")
    events.emit(root, "error", "failed", "d")
    seen = watching.until(2)
    time.sleep(events.POLL * 3)
    assert [(event["type"], event["target"]) for event in seen] == [("operation", "b"), ("error", "d")]


def test_partial_and_garbage_lines_are_skipped(root: Path, follower: Any) -> None:
    watching = follower()
    path = events.path_of(root)
    with open(path, "ab") as out:
        out.write(b"not json\n[1, 2]\n")
        out.flush()
        out.write(b'{"type": "instance", "action": "half')  # a writer mid-line ...
        out.flush()
        time.sleep(events.POLL * 3)
        out.write(b'", "target": "x"}\n')  # ... finishes it
    assert [(event["action"], event["target"]) for event in watching.until(1)] == [("half", "x")]


def test_timeout_ends_follow(root: Path) -> None:
    began = time.monotonic()
    assert list(events.follow(root, timeout=0.3)) == []
    assert 0.25 <= time.monotonic() - began < 2


def test_heartbeat_in_silence(root: Path) -> None:
    began = time.monotonic()
    seen = list(events.follow(root, timeout=1.0, heartbeat=0.3))
    assert seen and all(event == {} for event in seen)
    assert 2 <= len(seen) <= 4, seen
    assert time.monotonic() - began < 3


def test_no_heartbeat_while_events_flow(root: Path) -> None:
    stop = threading.Event()

    def writer() -> None:
        while not stop.wait(0.05):
            events.emit(root, "instance", "started", "busy")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        seen = list(events.follow(root, timeout=1.0, heartbeat=0.4))
    finally:
        stop.set()
        thread.join(5)
    assert len(seen) >= 5
    assert {} not in seen


def test_rotation_keeps_one_old_file(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_BYTES", 2000)
    for index in range(60):
        events.emit(root, "instance", "started", f"i{index}")
    current, old = events.path_of(root), root / (events.FILE + ".1")
    assert old.exists() and current.stat().st_size <= 2000 and old.stat().st_size <= 2000
    targets = [event["target"] for event in _lines(root)]
    assert targets == sorted(targets, key=lambda target: int(target[1:]))  # in order, none repeated
    assert targets[-1] == "i59"  # the newest is in the current file


def test_follower_goes_on_across_rotation(root: Path, follower: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_BYTES", 3000)
    events.emit(root, "instance", "created", "before")
    watching = follower()
    for index in range(50):  # about two files' worth: one rotation, while the follower reads
        events.emit(root, "instance", "started", f"i{index}")
        time.sleep(0.01)
    seen = watching.until(50)
    assert [event["target"] for event in seen] == [f"i{index}" for index in range(50)]


def test_concurrent_writers_lose_nothing_across_rotation(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers racing to rotate must not rotate twice (throwing away the first old file) nor
    write into a file that has just been renamed away."""
    monkeypatch.setattr(events, "MAX_BYTES", 60_000)
    writers, each = 4, 150  # ~90 bytes an event: ~54 KB in all, so at most one rotation is needed

    def write(number: int) -> None:
        for index in range(each):
            events.emit(root, "instance", "started", f"w{number}-{index}")

    threads = [threading.Thread(target=write, args=(number,)) for number in range(writers)]
    monkeypatch.setattr(events, "MAX_BYTES", 30_000)  # so it rotates once, mid-run
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    targets = [event["target"] for event in _lines(root)]
    assert len(targets) == len(set(targets))
    assert sorted(targets) == sorted(f"w{n}-{i}" for n in range(writers) for i in range(each))
