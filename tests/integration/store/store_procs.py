"""Worker processes for the store's integration tests (a module, not conftest, so tests can import
it by a name no other test directory uses)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import virtkit

WORKER = Path(__file__).with_name("store_worker.py")
REPO = Path(virtkit.__file__).resolve().parent.parent


class Worker:
    """One store_worker.py process, its output read line by line with bounded waits."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self, timeout: float) -> str:
        """The next line of output; fails the test after `timeout` seconds or if the worker exits."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"worker {self.pid} said nothing for {timeout}s; said {self.lines}")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    pytest.fail(f"worker {self.pid} exited: {self.finish(5)[1]}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        self.lines.append(line.decode())
        return self.lines[-1]

    def expect(self, word: str, timeout: float = 10) -> str:
        """The rest of the next line, which must start with `word`."""
        line = self.read_line(timeout)
        first, _, rest = line.partition(" ")
        assert first == word, f"worker {self.pid} said {line!r}, expected {word!r}"
        return rest

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for the exit; (exit code, all remaining output and stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        rest, self._buffer = (self._buffer + out).decode(), b""
        self.lines.extend(rest.splitlines())
        return self.proc.returncode, rest + err.decode()

    def kill_now(self) -> list[str]:
        """kill -9 the worker; every line it printed."""
        self.proc.send_signal(signal.SIGKILL)
        self.finish(10)
        return self.lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
