"""procs.ended on real processes, among them one whose leader has ended before its other thread."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtkit import procs

# The main thread ends alone (the exit system call, not exit_group): the leader is a zombie while
# the other thread still runs, as when a killed QEMU's leader ends before its vCPU threads.
LEADER_FIRST = r"""
import ctypes, sys, threading, time
threading.Thread(target=lambda: (sys.stdin.readline(), time.sleep(0.05))).start()
print("ready", flush=True)
ctypes.CDLL(None).syscall(int(sys.argv[1]), 0)
"""
SYS_EXIT = {"x86_64": 60, "aarch64": 93}


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]


def test_a_running_process_has_not_ended_a_reaped_one_has() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not procs.ended(child.pid)
    finally:
        child.kill()
        child.wait()
    assert procs.ended(child.pid)


def test_a_zombie_has_ended_a_zombie_leader_with_a_thread_left_has_not() -> None:
    if platform.machine() not in SYS_EXIT:
        pytest.skip(f"no exit system call number known for {platform.machine()}")
    child = subprocess.Popen([sys.executable, "-c", LEADER_FIRST, str(SYS_EXIT[platform.machine()])],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 10
        while _state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(child.pid) == "Z" and len(os.listdir(f"/proc/{child.pid}/task")) == 2
        assert not procs.ended(child.pid)  # its thread still holds the files they share
        child.stdin.write(b"go\n")
        child.stdin.flush()
        while not procs.ended(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert procs.ended(child.pid) and _state(child.pid) == "Z"  # a zombie, not yet reaped
    finally:
        child.kill()
        child.wait()
    assert procs.ended(child.pid)


def test_wait_returns_when_the_child_exits_not_at_the_next_poll() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(0.2); sys.exit(3)"])
    start = time.monotonic()
    assert procs.wait(child, 10) == 3
    took = time.monotonic() - start
    assert 0.2 <= took < 5
    assert procs.wait(child, 10) == 3  # reaped: its status again, its PID never looked at


def test_wait_gives_up_after_its_timeout_and_leaves_the_child_alone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            procs.wait(child, 0.2)
        assert 0.2 <= time.monotonic() - start < 5
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
    assert procs.wait(child, 1) == -9


def test_exited_on_a_pidfd() -> None:
    child = subprocess.Popen(["true"])
    pidfd = os.pidfd_open(child.pid)
    try:
        assert procs.exited(pidfd, 10)
    finally:
        os.close(pidfd)
        child.wait()
