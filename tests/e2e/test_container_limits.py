"""A container's share of the host, proven by behaviour: a memory hog is OOM-killed at its limit,
a fork bomb stops at its process limit, a busy loop under --cpus 0.5 gets about half a CPU, and
limits change live with `virtkit set`; bad limits are refused with nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import VIRTKIT, Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import state_of, tiny  # noqa: F401  (the fixture)

# the sleeps hold the limit while the loop forks on; their output goes elsewhere, so the exec ends with
# the shell (which may give up at the first refused fork) instead of 30 s later with the last sleep
BOMB = "p=; for i in $(seq 100); do sleep 30 >/dev/null 2>&1 & p=\"$p $!\"; done; kill $p 2>/dev/null; wait"
HOG = "x=$(head -c 150000000 /dev/zero | tr '\\0' a); echo survived ${#x}"


def _cpu_share(virtkit: Cli, state_root: Path, name: str, seconds: float = 3.0) -> float:
    env = {**os.environ, "VIRTKIT_ROOT": str(state_root)}
    loop = f"timeout {seconds + 2:g} sh -c 'while :; do :; done'; true"
    spinning = subprocess.Popen([str(VIRTKIT), "exec", name, "--", "sh", "-c", loop], env=env)
    try:
        time.sleep(0.7)
        before, began = state_of(virtkit, name)["live"]["cpu_seconds"], time.monotonic()  # type: ignore[index]
        time.sleep(seconds)
        after, ended = state_of(virtkit, name)["live"]["cpu_seconds"], time.monotonic()  # type: ignore[index]
    finally:
        spinning.wait(timeout=60)
    return float(after - before) / (ended - began)


def test_memory_processes_and_cpu_limits_hold(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    launched = tiny("launch", "tiny", "lim1", "--container", "--memory", "64MiB", "--processes", "50",
                    "--cpus", "0.5", "--wait", timeout=120)  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    share = _cpu_share(tiny, state_root, "lim1")
    assert 0.2 < share < 0.65, share
    hog = tiny("exec", "lim1", "--", "sh", "-c", HOG, timeout=120)
    assert hog.returncode == 137 and "survived" not in hog.stdout, (hog.returncode, hog.stdout[-200:])

    changed = tiny("set", "lim1", "memory=768MiB", "cpus=0.25")  # the shell's buffers double as they grow
    assert changed.returncode == 0 and "(now)" in changed.stdout, changed.stderr
    survived = tiny("exec", "lim1", "--", "sh", "-c", HOG, timeout=120)
    assert survived.returncode == 0 and "survived 150000000" in survived.stdout, survived.stderr
    quarter = _cpu_share(tiny, state_root, "lim1")
    assert 0.05 < quarter < 0.35, quarter
    bomb = tiny("exec", "lim1", "--", "sh", "-c", BOMB, timeout=120)  # last: it fills the pids limit
    refused = ("can't fork", "Resource temporarily unavailable")
    assert any(words in bomb.stderr for words in refused), bomb.stderr[-500:]
    shown = state_of(tiny, "lim1")
    assert shown["state"] == "running"  # the container lives on; only its new processes were refused


def test_bad_container_limits_leave_nothing(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    for options, needle in (
        (("--processes", "0"), "invalid process limit"),
        (("--processes", "many"), "invalid process limit"),
        (("--cpus", "0"), "more than 0"),
        (("--memory", "1MiB"), "too small"),
        (("--memory", "100000GiB"), "more than this host"),
    ):
        assert_clear_error(tiny("launch", "tiny", "x1", "--container", *options), 2, needle)
    assert json.loads(tiny("list", "--json").stdout) == []
    assert not (state_root / "instances").exists()
    assert "x1" not in Path("/proc/self/mounts").read_text()
