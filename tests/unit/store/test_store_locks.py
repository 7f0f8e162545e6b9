"""Object locks within one process: names map to safe paths, threads wait, the owner may re-enter.

Locks between real processes (and a holder killed by -9) are tested in tests/integration/store.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from virtkit.errors import BusyError
from virtkit.store import SqliteStore
from virtkit.store.locks import lock_path


def try_in_thread(store: SqliteStore, name: str, timeout: float) -> BaseException | None:
    """Lock `name` from another thread; what it raised, or None if it got the lock."""
    result: list[BaseException | None] = []

    def attempt() -> None:
        try:
            with store.lock("instance", name, timeout=timeout):
                result.append(None)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(timeout=timeout + 10)
    assert result, "the locking thread did not finish"
    return result[0]


def test_lock_files_stay_inside_the_locks_directory(tmp_path: Path) -> None:
    assert lock_path(tmp_path, "instance", "web1") == tmp_path / "instance" / "web1.lock"
    assert lock_path(tmp_path, "volume", "default/disk1") == tmp_path / "volume" / "default%2Fdisk1.lock"
    assert lock_path(tmp_path, "instance", "../../etc").parent == tmp_path / "instance"
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError):
            lock_path(tmp_path, "instance", bad)
        with pytest.raises(ValueError):
            lock_path(tmp_path, bad, "web1")


def test_another_thread_waits_then_gets_busy_error(store: SqliteStore) -> None:
    with store.lock("instance", "web1"):
        started = time.monotonic()
        error = try_in_thread(store, "web1", timeout=0.3)
        waited = time.monotonic() - started
    assert isinstance(error, BusyError)
    assert error.message.startswith(f"instance 'web1' is busy: process {os.getpid()} has held its lock")
    assert error.hint == "wait for that operation to finish, then retry"
    assert 0.3 <= waited < 3


def test_different_objects_do_not_block_each_other(store: SqliteStore) -> None:
    with store.lock("instance", "web1"):
        assert try_in_thread(store, "web2", timeout=0) is None


def test_the_lock_is_free_after_the_block_even_on_error(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError), store.lock("instance", "web1"):
        raise RuntimeError
    assert try_in_thread(store, "web1", timeout=0) is None


def test_the_owning_thread_may_re_enter_without_releasing_early(store: SqliteStore) -> None:
    with store.lock("instance", "web1"):
        with store.lock("instance", "web1", timeout=0):
            pass
        assert isinstance(try_in_thread(store, "web1", timeout=0), BusyError)
    assert try_in_thread(store, "web1", timeout=0) is None


@pytest.mark.parametrize("timeout", [-1.0, float("nan"), float("inf")])
def test_an_unbounded_or_negative_timeout_is_refused(store: SqliteStore, timeout: float) -> None:
    with pytest.raises(ValueError), store.lock("instance", "web1", timeout=timeout):
        pass
