"""A tiny system container's life as a user types it: launch, exec, pause, stop, start, killed
behind virtkit's back, delete — real runc under conmon, on an overlay of the image's rootfs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import state_of, tiny  # noqa: F401  (the fixture)


def _mounted_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(path) in line]


def test_system_container_lifecycle(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    launched = tiny("launch", "tiny", "c1", "--container", "--wait", timeout=120)
    assert launched.returncode == 0, launched.stderr
    shown = state_of(tiny, "c1")
    assert shown["state"] == "running" and shown["kind"] == "container" and isinstance(shown["pid"], int)
    assert "ready" in shown["boot"]  # type: ignore[operator]

    hostname = tiny("exec", "c1", "--", "hostname")
    assert (hostname.returncode, hostname.stdout.strip()) == (0, "c1"), hostname.stderr
    failing = tiny("exec", "c1", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (failing.returncode, failing.stdout, failing.stderr) == (3, "out\n", "err\n")
    init = tiny("exec", "c1", "--", "cat", "/proc/1/cmdline")
    assert init.stdout.split("\0")[0] in ("/sbin/init", "init"), init.stdout
    ps = tiny("exec", "c1", "--", "sh", "-c", "ls -d /proc/[0-9]* | wc -l")
    assert int(ps.stdout) < 20, ps.stdout  # its own PID namespace: not the host's hundreds

    # Copy-on-write: what the container writes stays in its upper layer, never in the image.
    assert tiny("exec", "c1", "--", "sh", "-c", "echo mine > /etc/written-here").returncode == 0
    assert (state_root / "instances" / "c1" / "upper" / "etc" / "written-here").read_text() == "mine\n"
    images = list((state_root / "images").glob("*/rootfs/etc/written-here"))
    assert images == []

    assert tiny("pause", "c1").returncode == 0
    assert state_of(tiny, "c1")["state"] == "paused"
    assert tiny("resume", "c1").returncode == 0

    began = time.monotonic()
    stopped = tiny("stop", "c1", "--timeout", "30", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert time.monotonic() - began < 25  # busybox init powered off: no timeout, no forced kill
    assert state_of(tiny, "c1")["state"] == "stopped"
    assert _mounted_under(state_root / "instances" / "c1") == []
    assert_clear_error(tiny("exec", "c1", "--", "true"), 1, "start it first")

    assert tiny("start", "c1", "--wait", timeout=120).returncode == 0
    assert tiny("exec", "c1", "--", "cat", "/etc/written-here").stdout == "mine\n"  # kept across restarts
    pid = state_of(tiny, "c1")["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)  # behind virtkit's back
    deadline = time.monotonic() + 10
    while (shown := state_of(tiny, "c1"))["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert shown["state"] == "error" and "SIGKILL" in str(shown["reason"])
    assert tiny("start", "c1", "--wait", timeout=120).returncode == 0

    assert tiny("delete", "--force", "c1", timeout=60).returncode == 0
    assert not (state_root / "instances" / "c1").exists()
    assert _mounted_under(state_root) == []
    assert json.loads(tiny("list", "--json").stdout) == []
    assert not list((state_root / "run" / "runc").glob("c1.*"))
