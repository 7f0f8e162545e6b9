"""The operation runner (ops/operations.py Operations) on the real SQLite store: success, failure,
cancel, wait with a timeout, recovery after a crash, and one operation at a time per target."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtkit.errors import NotFoundError, SpecError, StateError
from virtkit.model import OperationRecord, OperationStatus
from virtkit.ops import events
from virtkit.ops.operations import INTERRUPTED, Context, Operations, get_operation, list_operations
from virtkit.store import SqliteStore

DONE = (OperationStatus.SUCCESS, OperationStatus.FAILURE, OperationStatus.CANCELLED)


@pytest.fixture
def ops(root: Path, store: SqliteStore) -> Iterator[Operations]:
    runner = Operations(root, store)
    yield runner
    # No thread may outlive the test (it would write into a closed store).
    deadline = time.monotonic() + 10
    for record in list_operations(store):
        runner.wait(record.id, max(0.0, deadline - time.monotonic()))


def _finished(ops: Operations, record: OperationRecord, timeout: float = 10) -> OperationRecord:
    done = ops.wait(record.id, timeout)
    assert done.status in DONE, f"operation still {done.status.value} after {timeout} s"
    return done


def _events(root: Path) -> list[dict[str, Any]]:
    path = events.path_of(root)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_success_records_result_and_progress(ops: Operations, root: Path) -> None:
    def work(context: Context) -> dict[str, Any]:
        context.progress(50, "half way")
        return {"answer": 42}

    record = ops.submit("launch", "web1", work)
    assert (record.action, record.target, record.status) == ("launch", "web1", OperationStatus.PENDING)
    done = _finished(ops, record)
    assert done.status is OperationStatus.SUCCESS
    assert (done.result, done.progress, done.error) == ({"answer": 42}, 100.0, None)
    assert done.message == "half way"
    deadline = time.monotonic() + 10  # the "success" event is written just after the record is
    while True:
        actions = [(event["action"], event["details"]["id"]) for event in _events(root)
                   if event["type"] == "operation"]  # fmt: skip
        if ("success", record.id) in actions or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert ("created", record.id) in actions and ("success", record.id) in actions
    assert ("progress", record.id) in actions


def test_progress_is_clamped(ops: Operations) -> None:
    seen: list[float] = []

    def work(context: Context) -> None:
        context.progress(250)
        seen.append(get_operation(ops.store, context.id).progress)
        context.progress(-5)
        seen.append(get_operation(ops.store, context.id).progress)

    _finished(ops, ops.submit("copy", "a", work))
    assert seen == [100.0, 0.0]


def test_virtkit_error_is_a_failure_with_its_document(ops: Operations) -> None:
    def work(_context: Context) -> None:
        raise NotFoundError("image 'nope' not found", hint="`virtkit image list` shows the images")

    done = _finished(ops, ops.submit("launch", "web1", work))
    assert done.status is OperationStatus.FAILURE
    assert done.error == "image 'nope' not found"
    assert done.result["error"] == {
        "error": "NotFoundError", "message": "image 'nope' not found",
        "hint": "`virtkit image list` shows the images",
    }  # fmt: skip


def test_a_bug_is_a_failure_never_running(ops: Operations) -> None:
    def work(_context: Context) -> None:
        raise RuntimeError("boom")

    done = _finished(ops, ops.submit("launch", "web1", work))
    assert done.status is OperationStatus.FAILURE
    assert done.error is not None and "internal error" in done.error and "boom" in done.error


def test_cancel_a_cancellable_operation(ops: Operations) -> None:
    started = threading.Event()

    def work(context: Context) -> None:
        started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            context.check_cancelled()
            time.sleep(0.01)

    record = ops.submit("export", "web1", work, cancellable=True)
    assert started.wait(5)
    asked = ops.cancel(record.id)
    assert asked.id == record.id
    done = _finished(ops, record)
    assert done.status is OperationStatus.CANCELLED and done.error == "cancelled on request"
    with pytest.raises(StateError, match="nothing to cancel"):
        ops.cancel(record.id)


def test_cancel_refused_when_unsafe(ops: Operations) -> None:
    release = threading.Event()
    record = ops.submit("launch", "web1", lambda _context: {"ok": release.wait(10)})
    with pytest.raises(StateError, match="cannot be cancelled safely") as caught:
        ops.cancel(record.id)
    assert caught.value.hint
    release.set()
    assert _finished(ops, record).status is OperationStatus.SUCCESS


def test_cancel_of_a_finished_or_unknown_operation(ops: Operations) -> None:
    record = ops.submit("stop", "web1", lambda _context: None, cancellable=True)
    _finished(ops, record)
    with pytest.raises(StateError, match="success"):
        ops.cancel(record.id)
    with pytest.raises(NotFoundError):
        ops.cancel("00000000-0000-4000-8000-000000000000")
    with pytest.raises(SpecError, match="expected a UUID"):
        ops.cancel("not-an-id")


def test_wait_gives_up_after_its_timeout(ops: Operations) -> None:
    release = threading.Event()
    record = ops.submit("launch", "slow", lambda _context: {"ok": release.wait(10)})
    began = time.monotonic()
    seen = ops.wait(record.id, 0.3)
    took = time.monotonic() - began
    assert seen.status is OperationStatus.RUNNING
    assert 0.25 <= took < 2
    assert ops.wait(record.id, 0).status is OperationStatus.RUNNING  # no wait at all
    release.set()
    assert _finished(ops, record).result == {"ok": True}


def test_wait_returns_as_soon_as_done(ops: Operations) -> None:
    record = ops.submit("stop", "web1", lambda _context: time.sleep(0.2))
    began = time.monotonic()
    assert ops.wait(record.id, 30).status is OperationStatus.SUCCESS
    assert time.monotonic() - began < 2


def test_get_operation_refuses_bad_ids(store: SqliteStore) -> None:
    with pytest.raises(SpecError, match="expected a UUID") as caught:
        get_operation(store, "x" * 500)
    assert len(str(caught.value)) < 200 and caught.value.hint
    with pytest.raises(NotFoundError):
        get_operation(store, "00000000-0000-4000-8000-000000000000")


def test_recover_marks_pending_and_running_as_interrupted(root: Path, store: SqliteStore) -> None:
    """What a server killed mid-operation leaves behind; the next one finds it at start."""
    pending = store.create(OperationRecord(action="launch", target="a"))
    running = store.create(OperationRecord(action="stop", target="b", status=OperationStatus.RUNNING,
                                           progress=40))  # fmt: skip
    finished = store.create(OperationRecord(action="start", target="c", status=OperationStatus.SUCCESS))
    failed = store.create(OperationRecord(action="start", target="d", status=OperationStatus.FAILURE,
                                          error="its own reason"))  # fmt: skip
    stale = Operations(root, store).recover()
    assert sorted(record.id for record in stale) == sorted([pending.id, running.id])
    for record in (pending, running):
        now = store.get(OperationRecord, record.id)
        assert now.status is OperationStatus.FAILURE and now.error == INTERRUPTED
        assert "interrupted" in now.error
    assert store.get(OperationRecord, finished.id) == finished
    assert store.get(OperationRecord, failed.id).error == "its own reason"
    assert Operations(root, store).recover() == []  # once is enough
    assert [event["action"] for event in _events(root) if event["type"] == "operation"] == ["failure"] * 2


def test_list_operations_oldest_first_and_by_status(ops: Operations, store: SqliteStore) -> None:
    records = [ops.submit("start", f"t{index}", lambda _context: None) for index in range(3)]
    for record in records:
        _finished(ops, record)
    failing = ops.submit("stop", "t9", lambda _context: 1 / 0)  # type: ignore[func-returns-value]
    _finished(ops, failing)
    assert [record.id for record in list_operations(store)] == [*(r.id for r in records), failing.id]
    assert [record.id for record in list_operations(store, OperationStatus.FAILURE)] == [failing.id]


def test_one_target_never_runs_two_operations_at_once(ops: Operations) -> None:
    spans: list[tuple[float, float, str]] = []
    inside = {"count": 0, "most": 0}
    guard = threading.Lock()

    def work(context: Context) -> None:
        with guard:
            inside["count"] += 1
            inside["most"] = max(inside["most"], inside["count"])
        began = time.monotonic()
        time.sleep(0.05)
        with guard:
            inside["count"] -= 1
        spans.append((began, time.monotonic(), context.id))

    records = [ops.submit(action, "web1", work) for action in ["start", "stop", "pause", "resume"] * 3]
    for record in records:
        assert _finished(ops, record).status is OperationStatus.SUCCESS
    assert inside["most"] == 1
    ordered = sorted(spans)
    assert len(ordered) == len(records)
    for (_, end, _), (start, _, _) in itertools.pairwise(ordered):
        assert end <= start
    # The records say the same: each ran (updated_at of its end) before the next began.
    finals = sorted((ops.store.get(OperationRecord, record.id) for record in records),
                    key=lambda record: record.updated_at)  # fmt: skip
    assert len({record.updated_at for record in finals}) == len(finals)


def test_a_waiting_operation_is_pending_until_its_turn(ops: Operations) -> None:
    release = threading.Event()
    first = ops.submit("stop", "web1", lambda _context: {"ok": release.wait(10)})
    second = ops.submit("start", "web1", lambda _context: None)
    assert ops.wait(first.id, 0.2).status is OperationStatus.RUNNING
    assert get_operation(ops.store, second.id).status is OperationStatus.PENDING
    release.set()
    assert _finished(ops, second).status is OperationStatus.SUCCESS
    assert get_operation(ops.store, first.id).updated_at <= get_operation(ops.store, second.id).updated_at


def test_different_targets_run_side_by_side(ops: Operations) -> None:
    barrier = threading.Barrier(3, timeout=5)

    def work(_context: Context) -> dict[str, bool]:
        barrier.wait()  # all three must be inside at the same moment, or this breaks
        return {"ok": True}

    records = [ops.submit("start", f"web{index}", work) for index in range(3)]
    assert [_finished(ops, record).status for record in records] == [OperationStatus.SUCCESS] * 3


def test_many_operations_in_parallel_all_end(ops: Operations) -> None:
    records = [ops.submit("start", f"t{index % 5}", lambda _context: time.sleep(0.01)) for index in range(40)]
    assert {_finished(ops, record, timeout=30).status for record in records} == {OperationStatus.SUCCESS}
