"""`virtkit run`: one command in a new container, its output streamed and its exit status passed
through; with --rm nothing of it is left — no files, mounts, cgroups or records — however it ends."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import VIRTKIT, Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import tiny  # noqa: F401  (the fixture)


def _leftovers(state_root: Path) -> list[str]:
    found = [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(state_root) in line]
    oneshot = state_root / "oneshots"
    found += [str(p) for p in oneshot.iterdir()] if oneshot.exists() else []
    found += [str(p) for p in Path("/sys/fs/cgroup").glob("*/virtkit/run-*")]
    runc = state_root / "run" / "runc"
    found += [str(p) for p in runc.iterdir()] if runc.exists() else []
    return found


def test_run_rm_streams_output_and_passes_the_exit_status(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    done = tiny("run", "--rm", "tiny", "--", "sh", "-c", "echo out; echo err >&2; hostname; exit 7")
    assert (done.returncode, done.stderr) == (7, "err\n"), done.stderr
    out, hostname = done.stdout.splitlines()
    assert out == "out" and hostname.startswith("run-")
    assert _leftovers(state_root) == []
    assert json.loads(tiny("list", "--json").stdout) == []
    # Its root (an unprivileged host uid) owns its copy-on-write layer: it can write anywhere in it.
    written = tiny(
        "run", "--rm", "tiny", "--", "sh", "-c", "echo x > /f && mkdir /d && cat /proc/self/uid_map"
    )
    assert written.returncode == 0, written.stderr
    assert written.stdout.split()[:2] == ["0", written.stdout.split()[1]] and written.stdout.split()[1] != "0"

    named = tiny(
        "run",
        "--rm",
        "--name",
        "job1",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "tiny",
        "sh",
        "-c",
        'echo "$GREETING"; pwd; hostname',
    )
    assert (named.returncode, named.stdout) == (0, "hi there\n/tmp\njob1\n"), named.stderr
    piped = subprocess.run(
        [str(VIRTKIT), "run", "--rm", "tiny", "--", "tr", "a-z", "A-Z"],
        input="stdin\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "VIRTKIT_ROOT": str(state_root)},
    )
    assert (piped.returncode, piped.stdout) == (0, "STDIN\n"), piped.stderr
    assert _leftovers(state_root) == []


def test_run_enforces_its_limits(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    hog = tiny(
        "run",
        "--rm",
        "--memory",
        "32MiB",
        "tiny",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    )
    assert hog.returncode == 137, (hog.returncode, hog.stderr)  # OOM-killed at the limit
    forks = tiny(
        "run",
        "--rm",
        "--processes",
        "5",
        "tiny",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait; echo done",
    )
    assert "can't fork" in forks.stderr or "Resource temporarily unavailable" in forks.stderr, forks.stderr
    assert _leftovers(state_root) == []


def test_run_refuses_what_it_cannot_run_and_leaves_nothing(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    missing = tiny("run", "--rm", "tiny", "--", "nosuchcmd", "arg")
    assert_clear_error(missing, 127, "nosuchcmd: command not found")
    assert_clear_error(tiny("run", "--rm", "nosuchimage", "--", "true"), 125, "not found")
    assert_clear_error(tiny("run", "--rm", "tiny", "--", "/etc/passwd"), 126, "is not executable")
    assert_clear_error(tiny("run", "--rm", "tiny", "--", "/etc"), 126, "is a directory")
    assert_clear_error(tiny("run", "--rm", "-e", "=x", "tiny", "--", "true"), 125, "NAME=VALUE")
    assert_clear_error(tiny("run", "--rm", "-w", "tmp", "tiny", "--", "true"), 125, "absolute path")
    assert_clear_error(tiny("run", "--rm", "--memory", "1KiB", "tiny", "--", "true"), 125, "too small")
    assert_clear_error(tiny("run", "--rm", "--cpus", "0", "tiny", "--", "true"), 125, "more than 0")
    assert_clear_error(tiny("run", "--rm", "--processes", "many", "tiny", "--", "true"), 125, "process limit")
    assert_clear_error(tiny("run", "--rm", "--memory", "lots", "tiny", "--", "true"), 2, "memory size")
    assert_clear_error(tiny("run", "--rm", "--name", "../x", "tiny", "--", "true"), 2, "name")
    assert_clear_error(tiny("run", "--rm", "-t", "tiny", "--", "true"), 125, "terminal")
    assert_clear_error(tiny("run", "--rm", "tiny"), 125, "has no command of its own")
    assert tiny("create", "tiny", "c1", "--container").returncode == 0
    assert_clear_error(tiny("run", "--rm", "--name", "c1", "tiny", "--", "true"), 125, "already exists")
    assert_clear_error(tiny("run", "--name", "c1", "tiny", "--", "true"), 125, "already exists")
    assert _leftovers(state_root) == []
    assert [i["name"] for i in json.loads(tiny("list", "--json").stdout)] == ["c1"]


def test_signals_reach_the_command_and_the_container_is_cleaned_up(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    env = {**os.environ, "VIRTKIT_ROOT": str(state_root)}
    script = "trap 'echo got TERM; exit 5' TERM; echo ready; sleep 60 & wait"
    process = subprocess.Popen(
        [str(VIRTKIT), "run", "--rm", "tiny", "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 5
    assert process.stdout.read() == "got TERM\n"
    assert _leftovers(state_root) == []


def test_run_with_a_terminal(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    pid, fd = pty.fork()
    if pid == 0:  # the child: virtkit on a terminal, as a user at a shell
        os.environ["VIRTKIT_ROOT"] = str(state_root)
        os.execv(str(VIRTKIT), [str(VIRTKIT), "run", "--rm", "-t", "tiny", "--", "sh", "-c", "tty; exit 3"])
    output, deadline = b"", time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3, output
    assert b"/dev/pts/" in output
    assert _leftovers(state_root) == []


def test_run_without_rm_leaves_a_stopped_instance(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    done = tiny("run", "--name", "keep", "tiny", "--", "sh", "-c", "echo kept > /f; echo ran; exit 4")
    assert (done.returncode, done.stdout) == (4, "ran\n"), done.stderr
    (shown,) = json.loads(tiny("list", "--json").stdout)
    assert (shown["name"], shown["kind"], shown["state"]) == ("keep", "container", "stopped")
    assert (state_root / "instances" / "keep" / "upper" / "f").read_text() == "kept\n"
    assert [
        line for line in Path("/proc/self/mounts").read_text().splitlines() if str(state_root) in line
    ] == []
    assert tiny("delete", "keep").returncode == 0
    missing = tiny("run", "--name", "gone", "tiny", "--", "nosuchcmd")
    assert_clear_error(missing, 127, "command not found")
    assert json.loads(tiny("list", "--json").stdout) == []


def test_list_shows_a_running_one_shot_and_a_killed_one_is_reaped(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    env = {**os.environ, "VIRTKIT_ROOT": str(state_root)}
    argv = [str(VIRTKIT), "run", "--rm", "--name", "job9", "--memory", "64MiB", "tiny", "--", "sh", "-c",
            "echo ready; sleep 60"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    (listed,) = json.loads(tiny("list", "--json").stdout)
    assert (listed["name"], listed["state"], listed["oneshot"], listed["memory"]) == (
        "job9",
        "running",
        True,
        64 << 20,
    )
    assert "running (run --rm)" in tiny("list").stdout
    assert_clear_error(tiny("run", "--rm", "--name", "job9", "tiny", "--", "true"), 125, "is running")

    process.kill()  # SIGKILL: virtkit cannot clean up; its container and mount are left behind
    process.wait(timeout=10)
    assert json.loads(tiny("list", "--json").stdout) == []  # no longer shown: its owner is gone
    assert _leftovers(state_root) != []
    assert tiny("run", "--rm", "tiny", "--", "true").returncode == 0  # the next run cleans up
    assert _leftovers(state_root) == []
