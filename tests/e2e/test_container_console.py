"""`virtkit console` on a system container: its init's terminal, a root shell in tiny, piped or
interactive (window size passed on, Ctrl-] detaches); refused clearly once it is stopped."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import time
from pathlib import Path

from tests.e2e.conftest import VIRTKIT, Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import tiny  # noqa: F401  (the fixture)


def _read_until(fd: int, needle: bytes, timeout: float = 20) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_console_of_a_system_container(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    assert tiny("launch", "tiny", "c1", "--container", "--wait").returncode == 0
    env = {**os.environ, "VIRTKIT_ROOT": str(state_root)}
    answer = subprocess.run([str(VIRTKIT), "console", "c1"], input="echo sum=$((6*7))\n", capture_output=True,
                            text=True, env=env, timeout=30, check=False)  # fmt: skip
    assert answer.returncode == 0 and "sum=42" in answer.stdout, (answer.stdout, answer.stderr)

    pid, fd = pty.fork()
    if pid == 0:  # virtkit on a 33x101 terminal, as a user at a shell
        os.environ["VIRTKIT_ROOT"] = str(state_root)
        os.execv(str(VIRTKIT), [str(VIRTKIT), "console", "c1"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    assert b"Ctrl-] detaches" in _read_until(fd, b"Ctrl-] detaches")
    time.sleep(0.5)
    os.write(fd, b"stty size; echo done-$((1+1))\r")
    said = _read_until(fd, b"done-2")
    assert b"33 101" in said and b"done-2" in said, said
    os.write(fd, b"\x1d")  # Ctrl-]
    assert b"Detached from c1" in _read_until(fd, b"Detached from c1")
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    assert tiny("stop", "c1").returncode == 0
    assert_clear_error(tiny("console", "c1"), 1, "console is closed", "virtkit logs c1")
    assert "sum=42" in tiny("logs", "c1").stdout  # what the console showed stays in its log
