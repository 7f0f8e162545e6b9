"""Object locks between real processes: same object serializes, different objects overlap, a holder
killed by -9 lets go, a waiter gives up with a BusyError naming the holder.

Times are time.monotonic() values printed by the workers; CLOCK_MONOTONIC is system-wide on Linux.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from store_procs import Worker

from virtkit.errors import BusyError
from virtkit.store import open_store


def test_two_processes_locking_one_instance_take_turns(root: Path, spawn: Callable[..., Worker]) -> None:
    open_store(root).close()
    first = spawn("hold", root, "web1", 1.5)
    first.expect("trying")
    first.expect("acquired")
    second = spawn("hold", root, "web1", 0.0)
    second_trying = float(second.expect("trying"))
    first_released = float(first.expect("released"))
    second_acquired = float(second.expect("acquired"))

    assert second_trying < first_released, "the second process did not try while the first held the lock"
    assert second_acquired >= first_released
    assert second_acquired - first_released < 1.0  # it was waiting, not started late


def test_processes_locking_different_instances_overlap(root: Path, spawn: Callable[..., Worker]) -> None:
    open_store(root).close()
    first = spawn("hold", root, "web1", 1.5)
    first.expect("trying")
    first_acquired = float(first.expect("acquired"))
    second = spawn("hold", root, "web2", 0.0)
    second_trying = float(second.expect("trying"))
    second_acquired = float(second.expect("acquired"))
    first_released = float(first.expect("released"))

    assert first_acquired < second_acquired < first_released
    assert second_acquired - second_trying < 0.5


def test_a_lock_held_by_a_killed_process_is_free(root: Path, spawn: Callable[..., Worker]) -> None:
    with open_store(root) as store:
        holder = spawn("hold", root, "web1", 60)
        holder.expect("trying")
        holder.expect("acquired")
        with pytest.raises(BusyError), store.lock("instance", "web1", timeout=0):
            pass  # really held: the test below would prove nothing otherwise
        holder.kill_now()
        started = time.monotonic()
        with store.lock("instance", "web1", timeout=5):
            assert time.monotonic() - started < 1.0


def test_a_waiter_gives_up_with_a_message_naming_the_holder(root: Path, spawn: Callable[..., Worker]) -> None:
    with open_store(root) as store:
        holder = spawn("hold", root, "web1", 60)
        holder.expect("trying")
        holder.expect("acquired")
        started = time.monotonic()
        with pytest.raises(BusyError) as error, store.lock("instance", "web1", timeout=0.5):
            pass
        waited = time.monotonic() - started
        assert 0.5 <= waited < 2.5
        message = error.value.message
        assert message.startswith(f"instance 'web1' is busy: process {holder.pid} has held its lock for")
        assert "store_worker.py hold" in message
        assert error.value.hint == "wait for that operation to finish, then retry"

        # The same from another process, which exits non-zero.
        waiter = spawn("hold", root, "web1", 0, 0.3)
        waiter.expect("trying")
        assert waiter.expect("busy").startswith("instance 'web1' is busy")
        assert waiter.finish(10)[0] == 3


def test_a_program_started_under_a_lock_does_not_inherit_it(root: Path, spawn: Callable[..., Worker]) -> None:
    """QEMU or conmon started by an operation outlive it; they must not keep the instance locked."""
    with open_store(root) as store:
        with store.lock("instance", "web1"):
            child = subprocess.Popen(["sleep", "30"], close_fds=False)
        try:
            waiter = spawn("hold", root, "web1", 0, 0.0)
            waiter.expect("trying")
            waiter.expect("acquired")
        finally:
            child.kill()
            child.wait(timeout=10)
