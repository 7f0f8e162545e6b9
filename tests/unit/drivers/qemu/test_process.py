"""The QEMU process helpers on ordinary processes: the PID-reuse guard, bounded kills, death reasons,
and the boot watcher's log follower."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from virtkit.drivers.qemu import process
from virtkit.drivers.qemu.boot import LogFollower
from virtkit.errors import HostCapabilityError


def test_pidfile_of_an_unrelated_process_is_not_ours(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    pidfile.write_text(f"{os.getpid()}\n")
    assert process.read_pid(pidfile) == os.getpid()
    assert process.running_pid(pidfile, str(uuid.uuid4())) is None
    assert process.kill(os.getpid(), str(uuid.uuid4()))  # "gone" as far as we care: never signalled


@pytest.mark.parametrize("content", ["", "garbage", "-5", "0"])
def test_unreadable_pidfiles_name_no_process(tmp_path: Path, content: str) -> None:
    (tmp_path / "pid").write_text(content)
    assert process.read_pid(tmp_path / "pid") is None
    assert process.read_pid(tmp_path / "missing") is None


def test_spawned_process_is_found_by_its_uuid_then_killed_and_reaped(tmp_path: Path) -> None:
    token = str(uuid.uuid4())
    pid = process.spawn([sys.executable, "-c", "import time; time.sleep(60)", token], tmp_path / "log")
    try:
        (tmp_path / "pid").write_text(str(pid))
        assert process.running_pid(tmp_path / "pid", token) == pid
        assert not process.owns(pid, token[:-1])  # a whole argument, not a substring
        assert process.kill(pid, token, timeout=5)
        assert not process.alive(pid) and process.running_pid(tmp_path / "pid", token) is None
        assert process.exit_code(pid) == -9  # reaped, its status kept
    finally:
        process.kill(pid, token)


def test_a_child_that_exits_at_once_reports_its_status(tmp_path: Path) -> None:
    pid = process.spawn([sys.executable, "-c", "import sys; sys.stderr.write('bad option\\n'); sys.exit(3)"],
                        tmp_path / "log")  # fmt: skip
    deadline = time.monotonic() + 10
    while process.exit_code(pid) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.exit_code(pid) == 3
    assert process.tail(tmp_path / "log") == "bad option"


def test_a_missing_qemu_is_a_host_capability_error(tmp_path: Path) -> None:
    with pytest.raises(HostCapabilityError, match="qemu-system-aarch64-nonexistent is not installed"):
        process.spawn(["qemu-system-aarch64-nonexistent"], tmp_path / "log")


def test_death_reason_reads_only_this_boot_and_drops_timestamps(tmp_path: Path) -> None:
    log = tmp_path / "runtime.log"
    log.write_text("old boot: failure\n")
    offset = log.stat().st_size
    assert process.death_reason(log, offset) == "QEMU died without a message: killed (SIGKILL) or crashed"
    with log.open("a") as handle:
        handle.write("2026-11-28T05:00:00.123456Z qemu-system-x86_64: terminating on signal 15 from pid 7\n")
    assert process.death_reason(log, offset) == "qemu-system-x86_64: terminating on signal 15 from pid 7"
    assert process.without_timestamp("plain line") == "plain line"


def test_log_follower_finds_a_marker_split_across_writes(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(b"VIRTKIT-READY from an earlier boot\n")
    follower = LogFollower(console, console.stat().st_size)
    assert not follower.grew() and not follower.find(b"VIRTKIT-READY")
    with console.open("ab") as handle:
        handle.write(b"booting... VIRTKIT-RE")
    assert follower.grew() and not follower.find(b"VIRTKIT-READY")
    with console.open("ab") as handle:
        handle.write(b"ADY\n")
    assert follower.find(b"VIRTKIT-READY")
