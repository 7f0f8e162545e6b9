"""A tiny VM's life as a user types it: launch, show, exec, pause, stop, start, delete — real QEMU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import VIRTKIT, Cli, seed_root
from tests.e2e.test_cli import assert_clear_error


@pytest.fixture
def tiny(virtkit: Cli, state_root: Path, tiny_template: Path) -> Iterator[Cli]:
    """A root with the tiny image (the session's one, `tiny_template`); every instance left at the
    end is deleted."""
    seed_root(tiny_template, state_root)
    yield virtkit
    listed = virtkit("list", "--json")
    for instance in json.loads(listed.stdout or "[]"):
        virtkit("delete", "--force", instance["name"], timeout=60)
        console = state_root / "instances" / instance["name"] / "console.log"
        if console.exists():
            print(f"--- console of {instance['name']} ---\n{console.read_text(errors='replace')[-3000:]}")


def state_of(virtkit: Cli, name: str) -> dict[str, object]:
    result = virtkit("show", name, "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_launch_exec_pause_stop_start_delete(tiny: Cli, state_root: Path) -> None:
    launched = tiny("launch", "tiny", "web1", "--vm", "--memory", "256MiB", "--wait", timeout=180)
    assert launched.returncode == 0, launched.stderr
    assert "started" in launched.stdout
    shown = state_of(tiny, "web1")
    assert shown["state"] == "running" and isinstance(shown["pid"], int)
    assert "ready" in shown["boot"]  # type: ignore[operator]
    assert "-nodefaults" in tiny("show", "web1", "--runtime").stdout

    uname = tiny("exec", "web1", "--", "uname", "-m", timeout=60)
    assert uname.returncode == 0, uname.stderr
    assert uname.stdout.strip() == "x86_64"
    failing = tiny("exec", "web1", "--", "sh", "-c", "echo out; echo err >&2; exit 3", timeout=60)
    assert (failing.returncode, failing.stdout, failing.stderr) == (3, "out\n", "err\n")

    assert tiny("pause", "web1").returncode == 0
    assert state_of(tiny, "web1")["state"] == "paused"
    assert_clear_error(tiny("pause", "web1"), 1, "only a running instance")
    assert tiny("resume", "web1").returncode == 0

    assert_clear_error(tiny("delete", "web1"), 1, "stop it first")
    stopped = tiny("stop", "web1", "--timeout", "60", timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    assert state_of(tiny, "web1")["state"] == "stopped"
    assert_clear_error(tiny("stop", "web1"), 1, "already stopped")
    assert_clear_error(tiny("exec", "web1", "--", "true"), 1, "start it first")

    assert tiny("start", "web1", "--wait", timeout=180).returncode == 0
    assert tiny("delete", "--force", "web1", timeout=60).returncode == 0
    assert not (state_root / "instances" / "web1").exists()
    assert json.loads(tiny("list", "--json").stdout) == []


def test_qemu_killed_behind_our_back_is_seen(tiny: Cli) -> None:
    assert tiny("launch", "tiny", "victim", "--vm", timeout=180).returncode == 0
    pid = state_of(tiny, "victim")["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while state_of(tiny, "victim")["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state_of(tiny, "victim")["state"] in ("stopped", "error")
    assert tiny("start", "victim", "--wait", timeout=180).returncode == 0


def test_bad_launches_leave_nothing(tiny: Cli, state_root: Path) -> None:
    assert_clear_error(tiny("launch", "nope", "x1", "--vm"), 1, "image 'nope' not found")
    assert_clear_error(tiny("launch", "tiny", "x1", "--vm", "--cpus", "0"), 2, "more than 0")
    assert_clear_error(
        tiny("launch", "tiny", "x1", "--vm", "--memory", "100000GiB"), 2, "more than this host"
    )
    assert_clear_error(tiny("launch", "tiny", "x1", "--vm", "--memory", "lots"), 2, "invalid memory size")
    assert_clear_error(tiny("launch", "tiny", "Bad_Name", "--vm"), 2, "invalid instance name")
    dry = tiny("launch", "tiny", "x1", "--vm", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("qemu-system-x86_64") and "-nodefaults" in dry.stdout
    assert json.loads(tiny("list", "--json").stdout) == []
    assert not (state_root / "instances").exists()
    assert tiny("launch", "tiny", "dup", "--vm", timeout=180).returncode == 0
    assert_clear_error(tiny("launch", "tiny", "dup", "--vm"), 1, "already exists")


def test_console_log_and_piped_console(tiny: Cli, state_root: Path) -> None:
    assert tiny("launch", "tiny", "con1", "--vm", "--wait", timeout=180).returncode == 0
    log = tiny("console", "--log", "con1")
    assert log.returncode == 0 and "VIRTKIT-READY" in log.stdout
    env = {**os.environ, "VIRTKIT_ROOT": str(state_root)}
    piped = subprocess.run(
        [str(VIRTKIT), "console", "con1"],
        input="echo console-$((6*7))\n",
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert piped.returncode == 0, piped.stderr
    assert "console-42" in piped.stdout
    assert tiny("stop", "--force", "con1").returncode == 0
    assert_clear_error(tiny("console", "con1"), 1, "not running")
    assert "VIRTKIT-READY" in tiny("console", "--log", "con1").stdout


def test_foreign_architecture_by_emulation(tiny: Cli) -> None:
    assert_clear_error(tiny("launch", "tiny", "arm1", "--vm", "--arch", "aarch64"), 2, "is for x86_64")
    built = tiny("image", "build", "tiny", "--arch", "aarch64", timeout=300)
    assert built.returncode == 0, built.stderr
    launched = tiny("launch", "tiny", "arm1", "--vm", "--arch", "aarch64", "--wait", timeout=180)
    assert launched.returncode == 0, launched.stderr
    assert "emulated" in launched.stderr
    assert "qemu-system-aarch64" in tiny("show", "arm1", "--runtime").stdout
    uname = tiny("exec", "arm1", "--", "uname", "-m", timeout=60)
    assert (uname.returncode, uname.stdout.strip()) == (0, "aarch64")
