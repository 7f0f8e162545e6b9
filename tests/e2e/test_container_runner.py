"""The warm runner behind `virtkit run --rm`: the first run on a root starts it, the next ones go
through it with the same behaviour as in-process — output, input, exit status, signals, a terminal,
clear errors — and it steps aside when virtkit's code changes or its root goes away."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import VIRTKIT, Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import tiny  # noqa: F401  (the fixture)

RUNNER = Path("run") / "runner.sock"


def _runner_pid(state_root: Path) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"virtkit.cli.runner" in args and str(state_root).encode() in args:
                return int(entry.name)
    return None


def _warm(tiny: Cli, state_root: Path) -> int:  # noqa: F811
    assert tiny("run", "--rm", "tiny", "--", "true").returncode == 0
    deadline = time.monotonic() + 20
    while not (state_root / RUNNER).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = _runner_pid(state_root)
    assert pid is not None and (state_root / RUNNER).exists()
    return pid


def test_runs_go_through_the_warm_runner_with_the_same_behaviour(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    pid = _warm(tiny, state_root)
    done = tiny("run", "--rm", "-e", "A=1", "tiny", "--", "sh", "-c", "echo out $A; echo err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, "out 1\n", "err\n")
    env = {**os.environ, "VIRTKIT_ROOT": str(state_root)}
    piped = subprocess.run(
        [str(VIRTKIT), "run", "--rm", "tiny", "--", "tr", "a-z", "A-Z"],
        input="via runner\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert (piped.returncode, piped.stdout) == (0, "VIA RUNNER\n"), piped.stderr
    assert_clear_error(tiny("run", "--rm", "tiny", "--", "nosuchcmd"), 127, "nosuchcmd: command not found")
    assert_clear_error(tiny("run", "--rm", "nosuchimage", "--", "true"), 125, "not found")
    assert _runner_pid(state_root) == pid  # all served by the same warm process

    script = "trap 'echo got $1; exit 5' TERM INT; echo ready; sleep 60 & wait"
    for number, name in ((signal.SIGTERM, "TERM"), (signal.SIGINT, "INT")):
        process = subprocess.Popen(
            [str(VIRTKIT), "run", "--rm", "tiny", "--", "sh", "-c", script.replace("$1", name)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        process.send_signal(number)
        assert process.wait(timeout=30) == 5
        assert process.stdout.read() == f"got {name}\n"


def test_a_terminal_through_the_runner(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    _warm(tiny, state_root)
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["VIRTKIT_ROOT"] = str(state_root)
        os.execv(str(VIRTKIT), [str(VIRTKIT), "run", "--rm", "-t", "tiny", "--", "sh", "-c", "tty; exit 4"])
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
    assert os.waitstatus_to_exitcode(status) == 4, output
    assert b"/dev/pts/" in output


def test_the_runner_steps_aside_when_virtkit_changes(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    pid = _warm(tiny, state_root)
    module = Path(__file__).resolve().parents[2] / "virtkit" / "cli" / "runner.py"
    os.utime(module)  # as an upgrade or an edit would
    done = tiny("run", "--rm", "tiny", "--", "echo", "still works")
    assert (done.returncode, done.stdout) == (0, "still works\n"), done.stderr
    deadline = time.monotonic() + 10
    while _runner_pid(state_root) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _runner_pid(state_root) != pid  # the old one left; the run that found it started a new one
