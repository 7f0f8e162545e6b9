"""A writer killed by -9 at random moments: the store and the file it keeps stay whole.

The worker loops: one transaction sets N instances to counter i and says "committed i", then
atomic_write replaces ROOT/blob with a 256 KiB body marked i at both ends. After each kill the test
checks that SQLite's integrity holds, that every transaction is all or nothing (the N records agree),
that nothing acknowledged was lost, that the file is one complete version, and that opening the
store removes the temporary file the killed writer may have left.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from store_procs import Worker
from store_worker import blob

from virtkit.model import InstanceRecord
from virtkit.store import open_store

log = logging.getLogger(__name__)

ROUNDS = 10
RECORDS = 20


def temporaries(root: Path) -> list[str]:
    return [name for name in os.listdir(root) if ".vktmp." in name]


def check_database(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def stored_counter(root: Path) -> int:
    with open_store(root) as store:
        records = store.list(InstanceRecord)
    counters = {rec.labels["counter"] for rec in records}
    assert len(records) == RECORDS, f"{len(records)} records: a transaction was cut in half"
    assert len(counters) == 1, f"records disagree: {sorted(counters)}: a transaction was cut in half"
    return int(counters.pop())


def check_blob(path: Path, counter: int, before: int) -> int:
    """The counter the file is marked with, checked to be one whole version, not older than
    `before` (what the last check saw) and not newer than the store's `counter`."""
    body = path.read_bytes()
    head = body.partition(b"\n")[0]
    assert head.isdigit(), f"{path} is torn: it starts with {body[:20]!r}"
    marked = int(head)
    assert body == blob(marked), f"{path} is torn: {len(body)} bytes, not one whole version"
    # The file is written after its transaction commits, so it may lag the store: by more than one
    # when successive workers are each killed between a commit and their first file write.
    assert before <= marked <= counter, f"marked {marked}, store {counter}, last seen {before}"
    return marked


def test_kill_9_mid_write_loses_nothing_committed_and_tears_nothing(
    root: Path, spawn: Callable[..., Worker]
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    log.info("kill timing seed %d", seed)
    open_store(root).close()
    acknowledged = 0
    marked = 0
    rounds_with_temporaries = 0
    for round_ in range(ROUNDS):
        worker = spawn("churn", root, RECORDS)
        first = int(worker.expect("committed", timeout=20))
        assert first == acknowledged + 1, f"the worker did not resume from the stored counter ({seed=})"
        time.sleep(rng.uniform(0.0, 0.3))
        lines = worker.kill_now()
        acknowledged = max(int(line.split()[1]) for line in lines if line.startswith("committed"))

        check_database(root / "virtkit.db")
        rounds_with_temporaries += bool(temporaries(root))
        counter = stored_counter(root)  # opening the store also cleans the killed writer's temporaries
        # Every "committed" the worker printed is durable; one more commit may have landed between
        # its COMMIT and its print.
        assert acknowledged <= counter <= acknowledged + 1, f"round {round_}, {seed=}"
        acknowledged = counter
        if (root / "blob").exists():
            marked = check_blob(root / "blob", counter, marked)
        assert temporaries(root) == []
    log.info("%d rounds, %d killed mid-file-write", ROUNDS, rounds_with_temporaries)
