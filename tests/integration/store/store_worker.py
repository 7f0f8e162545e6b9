"""A separate virtkit process for the store's integration tests, driven by its arguments.

store_worker.py churn ROOT N        forever: one transaction sets N instances to counter i, then
                                    atomic_write of ROOT/blob with a large body marked i; prints
                                    "committed i" after each (the test kills it with -9)
store_worker.py hold ROOT NAME SECONDS [TIMEOUT]
                                    hold the lock of instance NAME for SECONDS; prints
                                    "trying T", "acquired T", "released T" or "busy MESSAGE"
                                    (exit 3). T is time.monotonic(), which is
                                    system-wide on Linux, so comparable between processes)
store_worker.py bump ROOT WORKER COUNT
                                    COUNT transactions, each incrementing a shared counter and
                                    creating a record of its own
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from virtkit.errors import BusyError
from virtkit.model import InstanceRecord, OperationRecord
from virtkit.store import atomic_write, open_store

BLOB_SIZE = 256 * 1024


def blob(counter: int) -> bytes:
    """A file body whose first and last lines carry the counter: a torn write would not match."""
    head = f"{counter}\n".encode()
    return head + b"x" * (BLOB_SIZE - 2 * len(head)) + head


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def churn(root: str, n: int) -> None:
    with open_store(root) as store:
        known = store.list(InstanceRecord)
        counter = max((int(i.labels["counter"]) for i in known), default=0)
        while True:
            counter += 1
            with store.transaction():
                for k in range(n):
                    rec = InstanceRecord(name=f"vm{k}", kind="vm", labels={"counter": str(counter)})
                    store.put(rec)
            say(f"committed {counter}")
            atomic_write(f"{root}/blob", blob(counter))


def hold(root: str, name: str, seconds: float, timeout: float) -> None:
    with open_store(root) as store:
        try:
            say(f"trying {time.monotonic()}")
            with store.lock("instance", name, timeout=timeout):
                say(f"acquired {time.monotonic()}")
                time.sleep(seconds)
                say(f"released {time.monotonic()}")
        except BusyError as exc:
            say(f"busy {exc}")
            sys.exit(3)


def bump(root: str, worker: str, count: int) -> None:
    with open_store(root) as store:
        say("ready")
        gate = Path(root, "go")
        deadline = time.monotonic() + 30
        while not gate.exists():  # start together with the other workers, so they contend
            if time.monotonic() > deadline:
                raise SystemExit("no go after 30s")
            time.sleep(0.005)
        longest_wait = 0.0
        for i in range(count):
            asked = time.monotonic()
            with store.transaction():
                longest_wait = max(longest_wait, time.monotonic() - asked)
                op = store.get(OperationRecord, "counter")
                store.put(op.model_copy(update={"result": {"n": op.result["n"] + 1}}))
                store.create(OperationRecord(id=f"{worker}-{i}", action="bump"))
    say(f"done {longest_wait}")


def main(argv: list[str]) -> None:
    mode, root, *rest = argv
    if mode == "churn":
        churn(root, int(rest[0]))
    elif mode == "hold":
        hold(root, rest[0], float(rest[1]), float(rest[2]) if len(rest) > 2 else 30.0)
    elif mode == "bump":
        bump(root, rest[0], int(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
