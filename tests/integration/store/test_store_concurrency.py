"""Several processes writing at once: they wait for each other instead of failing with
"database is locked", and read-modify-write transactions lose no update."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from store_procs import Worker

from virtkit.model import OperationRecord
from virtkit.store import open_store

WORKERS = 4
BUMPS = 200


def test_concurrent_writers_all_succeed_and_lose_nothing(root: Path, spawn: Callable[..., Worker]) -> None:
    with open_store(root) as store:
        store.create(OperationRecord(id="counter", action="count", result={"n": 0}))

    workers = [spawn("bump", root, f"w{i}", BUMPS) for i in range(WORKERS)]
    for worker in workers:
        worker.expect("ready", timeout=20)
    (root / "go").touch()
    waits = []
    for worker in workers:
        code, output = worker.finish(60)
        assert code == 0, output
        assert "database is locked" not in output
        assert worker.lines[-1].startswith("done ")
        waits.append(float(worker.lines[-1].split()[1]))

    # They contended: some transaction waited for another process's (SQLite's lock is not fair,
    # so one process often runs many transactions in a row while the others wait).
    assert max(waits) > 0.02, waits
    with open_store(root) as store:
        assert store.get(OperationRecord, "counter").result == {"n": WORKERS * BUMPS}
        assert len(store.list(OperationRecord)) == WORKERS * BUMPS + 1
