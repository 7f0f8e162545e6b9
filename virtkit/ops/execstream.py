"""Exec with its output as it is written: what the API streams (`POST /1.0/instances/NAME/exec/stream`).

A container's command runs under `runc exec` with pipes, so its stdout and stderr arrive as the
command writes them; `--pid-file` names the command's own process, so a timeout or a reader that
went away kills the command itself, not only runc (which would leave it running in the container).
A VM's agent answers only when the command has ended: its output comes whole, at the end, from a
helper thread the caller waits on (bounded by the command's timeout), with heartbeats meanwhile.

    stream = open_exec(root, store, "web1", ["sh", "-c", "echo hi"], timeout=60)
    try:
        for fd, data in stream.pieces(heartbeat=15):   # (1|2, bytes); (0, b"") after a silence
            ...
        code = stream.exit_code
    finally:
        stream.close()

`pieces` and `close` may run on different threads: `close` kills what still runs, then releases
the pipes once no read is in progress.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from virtkit.drivers.base import ExecResult, InstancePaths, get_driver
from virtkit.errors import StateError, ToolError
from virtkit.model import InstanceKind, InstanceRecord, InstanceState, validate_name
from virtkit.ops.lifecycle import DriverFor, Lifecycle
from virtkit.store import Store

POLL = 0.2  # how long one read waits, so `close` never waits longer for a read to end
KILL_WAIT = 5.0
PIDFILE_WAIT = 2.0
CHUNK = 65536


class ExecStream(Protocol):
    exit_code: int | None

    def pieces(self, heartbeat: float) -> Iterator[tuple[int, bytes]]:
        """(1, stdout bytes), (2, stderr bytes) as written, (0, b"") after `heartbeat` s of silence;
        ends when the command has (then `exit_code` is set). ToolError when it ran over its timeout."""

    def interrupt(self) -> None:
        """Kill the command if it still runs, at once (any thread): `pieces` then soon ends."""

    def close(self) -> None:
        """Kill the command if it still runs; release everything (idempotent, any thread)."""


def open_exec(root: Path, store: Store, name: str, argv: list[str], *, timeout: float,
              drivers: DriverFor = get_driver) -> ExecStream:  # fmt: skip
    """Start `argv` in the running instance `name`; what it writes comes from `pieces`.
    NotFoundError, StateError (not running), CommandNotFoundError (containers) before it starts."""
    record = store.get(InstanceRecord, validate_name(name))
    driver, paths = drivers(record.kind), InstancePaths.of(root, record.name)
    state = driver.status(record, paths).state
    if state is not InstanceState.RUNNING:
        raise StateError(f"instance {name!r} is {state.value}: start it first")
    if record.kind is InstanceKind.CONTAINER and drivers is get_driver:  # runc's container, not a fake's
        return _container(root, store, record, paths, argv, timeout)
    return _Whole(lambda: driver.exec(record, paths, argv, timeout))


def _container(root: Path, store: Store, record: InstanceRecord, paths: InstancePaths, argv: list[str],
               timeout: float) -> ExecStream:  # fmt: skip
    from virtkit.drivers.oci import foreground
    from virtkit.drivers.oci.plan import ContainerFiles, container_id
    from virtkit.drivers.oci.runtime import runtime_of
    from virtkit.drivers.oci.spec import ContainerSpec

    runtime = Lifecycle(root, store).runtime(record.name)
    files = ContainerFiles(paths)
    env = tuple(ContainerSpec.from_dict(runtime.config["spec"]).env)
    foreground.find_command(files.merged, argv[0], env, where=f"instance {record.name}", live=True)
    pidfile = files.bundle / f"exec-{os.getpid()}-{os.urandom(4).hex()}.pid"
    command = runtime_of(root, runtime.config).argv("exec", "--pid-file", str(pidfile),
                                                    container_id(record), *argv)  # fmt: skip
    return _Piped(command, pidfile, argv[0], record.name, timeout)


class _Piped:
    """`runc exec` with its stdout and stderr on pipes."""

    def __init__(self, command: list[str], pidfile: Path, program: str, name: str, timeout: float) -> None:
        self.exit_code: int | None = None
        self.pidfile, self.program, self.name, self.timeout = pidfile, program, name, timeout
        self._guard = threading.Lock()  # held by a read in progress, and by the release
        self._closed = False
        self._stopping = threading.Event()
        try:
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE)  # fmt: skip
        except FileNotFoundError:
            raise ToolError(f"{command[0]} is not installed", argv=command) from None
        self._deadline = time.monotonic() + timeout
        self._selector = selectors.DefaultSelector()
        assert self._proc.stdout is not None and self._proc.stderr is not None
        for fd, pipe in ((1, self._proc.stdout), (2, self._proc.stderr)):
            os.set_blocking(pipe.fileno(), False)
            self._selector.register(pipe, selectors.EVENT_READ, fd)

    def pieces(self, heartbeat: float) -> Iterator[tuple[int, bytes]]:
        quiet_since = time.monotonic()
        while True:
            if self._stopping.is_set():
                self._kill()
            with self._guard:
                if self._closed:
                    return
                said = self._read()
                if said is None:  # both pipes at their end: the command has ended
                    self.exit_code = self._reap()
                    return
            for piece in said:
                quiet_since = time.monotonic()
                yield piece
            now = time.monotonic()
            if now > self._deadline:
                self._kill()
                raise ToolError(f"{self.program} did not finish within {self.timeout:g} s in {self.name}; "
                                "it was killed", hint="give it more time with a longer timeout")  # fmt: skip
            if not said and now - quiet_since >= heartbeat:
                quiet_since = now
                yield 0, b""

    def _read(self) -> list[tuple[int, bytes]] | None:
        """What the pipes hold now (waiting at most POLL); None once both have ended."""
        if not self._selector.get_map():
            return None
        said = []
        for key, _ in self._selector.select(POLL):
            try:
                data = os.read(key.fd, CHUNK)
            except BlockingIOError:
                continue
            if data:
                said.append((int(key.data), data))
            else:
                self._selector.unregister(key.fileobj)
        return said

    def _reap(self) -> int:
        try:
            code = self._proc.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self._proc.wait()
        return 128 - code if code < 0 else code

    def interrupt(self) -> None:
        """Asks `pieces` (its thread polls every POLL s) to kill the command: learning its PID may
        take a moment, which the caller's thread (the event loop) must not wait."""
        self._stopping.set()

    def _kill(self) -> None:
        """The command first (runc cannot forward SIGKILL), then runc."""
        if self._proc.poll() is not None:
            return
        pid = self._command_pid()
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._proc.kill()

    def _command_pid(self) -> int | None:
        """The command's PID from runc's pid file, which runc writes just *after* starting it: the
        command may already have spoken (and its reader gone) before the file is there."""
        deadline = time.monotonic() + PIDFILE_WAIT
        while True:
            with contextlib.suppress(OSError, ValueError):
                return int(self.pidfile.read_text().strip())
            if self._proc.poll() is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.01)

    def close(self) -> None:
        self._kill()
        with self._guard:
            if self._closed:
                return
            self._closed = True
            self._selector.close()
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()
            try:
                self._proc.wait(KILL_WAIT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self.pidfile.unlink(missing_ok=True)


class _Whole:
    """A command whose output only comes when it has ended (a VM's agent), run by a helper thread."""

    def __init__(self, run: _Run) -> None:
        self.exit_code: int | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vk-exec")
        self._future: Future[ExecResult] = self._pool.submit(run)

    def pieces(self, heartbeat: float) -> Iterator[tuple[int, bytes]]:
        while True:
            try:
                result = self._future.result(timeout=heartbeat)
            except TimeoutError:
                yield 0, b""
                continue
            break
        for fd, data in ((1, result.stdout), (2, result.stderr)):
            for start in range(0, len(data), CHUNK):
                yield fd, data[start : start + CHUNK]
        self.exit_code = result.exit_code

    def interrupt(self) -> None:
        """Nothing to kill from here: the agent's own timeout bounds the command."""

    def close(self) -> None:
        self._pool.shutdown(wait=False)  # the agent's own timeout bounds what still runs


class _Run(Protocol):
    def __call__(self) -> ExecResult: ...
