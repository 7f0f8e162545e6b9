"""A VM's share of the host, as a user sets it: CPU allowance measured, balloon seen by the guest,
disk throttling timed, QEMU confined to an unprivileged user and its own cgroup — real QEMU (TCG).

The CPU figures come from `virtkit show --json` (the VM's cgroup CPU time), the memory figures
from the guest's /proc/meminfo, the disk figures from dd with O_DIRECT in the guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.conftest import VIRTKIT, Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import state_of, tiny  # noqa: F401  (the fixture)
from virtkit.drivers.cgroup import Cgroup, Limits

BUSY = "while :; do :; done"
MiB = 1024 * 1024


def live(virtkit: Cli, name: str) -> dict[str, object]:
    details = state_of(virtkit, name)["live"]
    assert isinstance(details, dict)
    return details


@contextlib.contextmanager
def spinning(virtkit: Cli, state_root: Path, name: str, seconds: float) -> Iterator[None]:
    """The guest spinning in a busy loop (for at most `seconds`) while the body runs; one loop for
    every measurement of a test, so each does not wait for its own loop to start and end."""
    env = {**os.environ, "VIRTKIT_ROOT": str(state_root)}
    loop = f"timeout {seconds:g} sh -c '{BUSY}'; true"
    spinner = subprocess.Popen(
        [str(VIRTKIT), "exec", name, "--", "sh", "-c", loop], env=env, stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(1.0)  # let the loop start
        yield
        assert spinner.poll() is None, "the busy loop ended before the measurements did"
    finally:
        spinner.terminate()  # the exec only: the guest's loop ends by its timeout, or with the VM
        spinner.wait(timeout=60)


def cpu_share(virtkit: Cli, name: str, seconds: float = 4.0) -> float:
    """Host CPUs the VM used over `seconds` (1.0 = one host CPU), while its guest spins."""
    before, began = live(virtkit, name)["cpu_seconds"], time.monotonic()
    time.sleep(seconds)
    after, ended = live(virtkit, name)["cpu_seconds"], time.monotonic()
    assert isinstance(before, float) and isinstance(after, float)
    return (after - before) / (ended - began)


def mem_total(virtkit: Cli, name: str) -> int:
    result = virtkit("exec", name, "--", "cat", "/proc/meminfo", timeout=60)
    assert result.returncode == 0, result.stderr
    match = re.search(r"^MemTotal:\s+(\d+) kB", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return int(match.group(1)) * 1024


def wait_mem_total(virtkit: Cli, name: str, below: int | None = None, above: int | None = None) -> int:
    deadline = time.monotonic() + 60
    while True:
        total = mem_total(virtkit, name)
        if (below is None or total < below) and (above is None or total > above):
            return total
        assert time.monotonic() < deadline, f"MemTotal stayed {total}"
        time.sleep(0.5)


def test_cpu_allowance_holds_and_changes_live(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    launched = tiny("launch", "tiny", "cpu1", "--vm", "--cpu-allowance", "50%", "--wait", timeout=240)
    assert launched.returncode == 0, launched.stderr
    details = live(tiny, "cpu1")
    assert details["cpu_allowance"] == "50ms/100ms" and str(details["cgroup"]).startswith("virtkit/cpu1.")
    with spinning(tiny, state_root, "cpu1", seconds=60):
        half = cpu_share(tiny, "cpu1")
        assert 0.2 < half < 0.6, half  # unconfined, a spinning TCG vCPU takes a whole host CPU
        changed = tiny("set", "cpu1", "cpu.allowance=20%")  # while the guest spins
        assert changed.returncode == 0 and "(now)" in changed.stdout, changed.stderr
        time.sleep(0.5)
        fifth = cpu_share(tiny, "cpu1")
        assert 0.05 < fifth < 0.27, fifth
    assert "--cpu-allowance" not in tiny("show", "cpu1", "--runtime").stdout  # a cgroup, not a QEMU flag
    assert json.loads(tiny("show", "cpu1", "--json").stdout)["config"]["cpu_allowance"] == "20%"


def test_balloon_shrinks_a_running_guest(tiny: Cli) -> None:  # noqa: F811
    launched = tiny("launch", "tiny", "mem1", "--vm", "--memory", "256MiB", "--wait", timeout=240)
    assert launched.returncode == 0, launched.stderr
    booted = mem_total(tiny, "mem1")
    assert booted > 160 * MiB
    shrunk = tiny("set", "mem1", "memory=128MiB")
    assert shrunk.returncode == 0 and "(now)" in shrunk.stdout, shrunk.stderr
    # The balloon takes the 128 MiB back a few pages at a time: wait for (nearly) all of it.
    small = wait_mem_total(tiny, "mem1", below=booted - 120 * MiB)
    assert state_of(tiny, "mem1")["memory"] == 128 * MiB
    assert_clear_error(tiny("set", "mem1", "memory=512MiB"), 1, "booted with 256MiB")
    assert tiny("set", "mem1", "memory=256MiB").returncode == 0  # back up to what it booted with
    wait_mem_total(tiny, "mem1", above=small + 100 * MiB)
    assert_clear_error(tiny("set", "mem1", "cpus=2"), 1, "next start")
    assert tiny("stop", "mem1", "--force").returncode == 0
    assert tiny("set", "mem1", "memory=160MiB", "cpus=2").returncode == 0  # stopped: next start
    assert tiny("start", "mem1", "--wait", timeout=240).returncode == 0
    assert mem_total(tiny, "mem1") < 160 * MiB
    nproc = tiny("exec", "mem1", "--", "nproc")
    assert nproc.stdout.strip() == "2", nproc.stderr


def _dd_seconds(virtkit: Cli, name: str, args: str) -> float:
    result = virtkit("exec", name, "--", "sh", "-c", f"time dd if=/dev/vda of=/dev/null iflag=direct {args}")
    assert result.returncode == 0, result.stderr
    match = re.search(r"real\s+(?:(\d+)m\s*)?([\d.]+)s", result.stderr)
    assert match, result.stderr
    return int(match.group(1) or 0) * 60 + float(match.group(2))


def test_disk_throttling_holds_and_changes_live(tiny: Cli) -> None:  # noqa: F811
    launched = tiny("launch", "tiny", "io1", "--vm", "--disk-bandwidth", "1MiB", "--wait", timeout=240)
    assert launched.returncode == 0, launched.stderr
    assert _dd_seconds(tiny, "io1", "bs=64k count=48") > 2.0  # 3 MiB at 1 MiB/s
    assert tiny("set", "io1", "disk.bandwidth=", "disk.iops=20").returncode == 0
    assert _dd_seconds(tiny, "io1", "bs=4k count=60 skip=4000") > 2.0  # 60 reads at 20 per second
    assert tiny("set", "io1", "disk.iops=").returncode == 0
    assert _dd_seconds(tiny, "io1", "bs=64k count=48 skip=200") < 1.5
    assert live(tiny, "io1")["disk_limits"] == [{"iops": None, "bps": None}]


def test_qemu_runs_unprivileged_in_its_own_cgroup(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    user = pwd.getpwnam("virtkit-qemu")  # made by scripts/dev.sh setup
    launched = tiny("launch", "tiny", "jail1", "--vm", "--wait", timeout=240)
    assert launched.returncode == 0, launched.stderr
    assert "QEMU runs as root" not in launched.stderr
    pid = state_of(tiny, "jail1")["pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(rf"^Uid:\s+{user.pw_uid}\s+{user.pw_uid}\s+{user.pw_uid}\s+{user.pw_uid}$", status, re.M)
    assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    details = live(tiny, "jail1")
    assert details["user"] == "virtkit-qemu" and details["memory_ceiling"] == (256 + 256 + 1024) * MiB
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"/{details['cgroup']}" in cgroup
    directory = state_root / "instances" / "jail1"
    assert directory.stat().st_mode & 0o1777 == 0o1770  # sticky: QEMU cannot replace root's files
    assert (directory / "root.qcow2").stat().st_uid == user.pw_uid
    assert (directory / "runtime.json").stat().st_uid == 0
    assert tiny("exec", "jail1", "--", "true").returncode == 0
    assert tiny("stop", "jail1", "--timeout", "60", timeout=90).returncode == 0
    assert not any(path.exists() for path in Cgroup(str(details["cgroup"])).dirs().values())


def test_qemu_killed_at_its_memory_ceiling_is_said(tiny: Cli) -> None:  # noqa: F811
    assert tiny("launch", "tiny", "oom1", "--vm", "--wait", timeout=240).returncode == 0
    cgroup = Cgroup(str(live(tiny, "oom1")["cgroup"]))
    used = cgroup.memory_bytes()
    assert used is not None
    cgroup.set(Limits(memory_max=used + 32 * MiB))  # fault injection: a ceiling just above its use
    fill = "mount -t tmpfs -o size=200m none /mnt && dd if=/dev/zero of=/mnt/fill bs=1M count=190"
    assert tiny("exec", "oom1", "--", "sh", "-c", fill, timeout=120).returncode != 0
    deadline = time.monotonic() + 30
    while (shown := state_of(tiny, "oom1"))["state"] != "error":
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert "out of memory at the VM's ceiling" in str(shown["reason"])
    assert "out of memory" in tiny("show", "oom1").stdout
    assert tiny("start", "oom1", "--wait", timeout=240).returncode == 0  # a fresh ceiling


def test_unreachable_root_runs_qemu_as_root_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "private" / "root"
    root.parent.mkdir(mode=0o700)
    env = {**os.environ, "VIRTKIT_ROOT": str(root)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VIRTKIT), *args], capture_output=True, text=True, env=env, timeout=300)

    assert run("image", "build", "tiny").returncode == 0
    dry = run("launch", "tiny", "r1", "--vm", "--dry-run")
    assert dry.returncode == 0 and "QEMU runs as root: user virtkit-qemu cannot enter" in dry.stderr


def test_bad_limits_are_refused_and_leave_nothing(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    for allowance in ("lots", "0%", "-5%", "99999%", "1ms/5000ms", "0.1ms/100ms"):
        assert_clear_error(
            tiny("launch", "tiny", "x1", "--vm", "--cpu-allowance", allowance), 2, "CPU allowance"
        )
    assert_clear_error(tiny("launch", "tiny", "x1", "--vm", "--disk-iops", "0"), 2, "disk IOPS")
    assert_clear_error(tiny("launch", "tiny", "x1", "--vm", "--disk-bandwidth", "fast"), 2, "disk bandwidth")
    assert json.loads(tiny("list", "--json").stdout) == []
    assert not (state_root / "instances").exists()

    assert tiny("create", "tiny", "s1", "--vm").returncode == 0
    before = state_of(tiny, "s1")
    for words, code, needle in (
        (["bogus=1"], 2, "unknown setting"),
        (["memory"], 2, "KEY=VALUE"),
        (["memory=lots"], 2, "invalid memory size"),
        (["memory=100000GiB"], 2, "more than this host"),
        (["memory=1MiB"], 2, "too small"),
        (["cpus=0"], 2, "more than 0"),
        (["cpus=nan"], 2, "CPU count"),
        (["cpus=1.5"], 2, "whole number"),
        (["cpu.allowance=lots", "memory=128MiB"], 2, "CPU allowance"),
        (["disk.iops=-1"], 2, "disk IOPS"),
        (["memory=128MiB", "memory=64MiB"], 2, "given twice"),
    ):
        assert_clear_error(tiny("set", "s1", *words), code, needle)
    assert_clear_error(tiny("set", "nothere", "memory=128MiB"), 1, "not found")
    after = state_of(tiny, "s1")
    kept = ("memory", "cpus", "config")
    assert [after[key] for key in kept] == [before[key] for key in kept]
