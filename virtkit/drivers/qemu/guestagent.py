"""Running a command in a Debian guest through qemu-guest-agent (virtio-serial port org.qemu.guest_agent.0).

QGA speaks JSON, one object per line. The stream is first flushed with a 0xFF byte (which resets
the agent's parser) and ``guest-sync-delimited``, whose answer QGA prefixes with 0xFF: everything
before that byte is a previous client's leftover. Then ``guest-exec`` with ``capture-output``
starts the program (QGA searches PATH; no shell), and ``guest-exec-status`` is polled with a
growing interval until it has exited or the command's timeout ran out; a program running over is
killed (``kill -KILL PID``, run through guest-exec as well) and reported as a ToolError. Its output
comes base64-encoded; QGA itself caps each stream at 16 MiB and says so ("out-truncated").

`SyncProbe` is the readiness check of the boot watch (boot.py): has the agent answered a sync
yet? It is asked in short slices, so the watch can look at the console and at QEMU in between.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from virtkit.drivers.base import ExecResult
from virtkit.drivers.qemu.channel import (
    GRACE,
    PING_INTERVAL,
    SYNC_TIMEOUT,
    TRANSFER_TIMEOUT,
    AgentClosed,
    AgentTimeout,
    Link,
    agent_errors,
    connect,
)
from virtkit.errors import SpecError, StateError, ToolError

POLL_FIRST = 0.01  # seconds between status polls, doubling up to POLL_MAX
POLL_MAX = 0.25
REPLY_MAX = 64 * 1024 * 1024  # a status reply carries up to 2 x 16 MiB of output, in base64
HINT = "is qemu-guest-agent installed and running in the guest? Is the guest still booting?"
# How QGA (GLib's g_spawn) says the program could not be started: reported as exit code 127.
SPAWN_FAILED = re.compile(r"Failed to execute child process|No such file|not found", re.IGNORECASE)


class QgaError(Exception):
    """Internal: QGA answered a command with an error."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.desc = str(error.get("desc", error))
        super().__init__(self.desc)


class Qga:
    """A synchronised conversation with qemu-guest-agent on one connection."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def sync(self, wait: float) -> None:
        """Flush and resynchronise: repeat guest-sync-delimited until one is answered."""
        sync_id = secrets.randbelow(1 << 31)
        request = b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
                                       ).encode() + b"\n"
        deadline = time.monotonic() + wait
        while True:
            self.link.send(request, deadline)
            attempt = min(deadline, time.monotonic() + PING_INTERVAL)
            try:
                while self.link.skip_until(b"\xff", attempt):
                    if self._reply(attempt).get("return") == sync_id:
                        return
            except AgentTimeout:
                pass  # the answer is half there: wait on with the next attempt
            if time.monotonic() >= deadline:
                raise AgentTimeout

    def _reply(self, deadline: float) -> dict[str, Any]:
        line = self.link.read_line(deadline, REPLY_MAX).lstrip(b"\xff")
        try:
            reply = json.loads(line)
        except ValueError:
            raise ToolError(f"qemu-guest-agent sent something that is not JSON: {line[:200]!r}") from None
        if not isinstance(reply, dict):
            raise ToolError(f"qemu-guest-agent sent an unexpected reply: {line[:200]!r}")
        return reply

    def call(self, command: str, arguments: dict[str, Any], deadline: float) -> Any:
        """Run one QGA command and return its "return" value; QgaError when it failed."""
        call_id = secrets.token_hex(8)
        request = {"execute": command, "arguments": arguments, "id": call_id}
        self.link.send(json.dumps(request).encode() + b"\n", deadline)
        while True:
            reply = self._reply(deadline)
            if reply.get("id") != call_id:
                continue  # the answer to an extra sync, or to a previous client
            if "error" in reply:
                raise QgaError(reply["error"] if isinstance(reply["error"], dict) else {})
            return reply.get("return")

    def wait_exit(self, pid: int, deadline: float) -> dict[str, Any] | None:
        """Poll guest-exec-status until the program exited (its status) or `deadline` (None)."""
        delay = POLL_FIRST
        while True:
            status = self.call("guest-exec-status", {"pid": pid}, deadline + TRANSFER_TIMEOUT)
            if not isinstance(status, dict):
                raise ToolError(f"qemu-guest-agent sent an unexpected exec status: {status!r}")
            if status.get("exited"):
                return status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, POLL_MAX)

    def kill(self, pid: int) -> None:
        """Best effort: kill a program that ran over its timeout and reap its status in QGA."""
        deadline = time.monotonic() + GRACE
        try:
            killer = self.call("guest-exec", {"path": "kill", "arg": ["-KILL", str(pid)]}, deadline)
            self.wait_exit(pid, deadline)
            if isinstance(killer, dict) and isinstance(killer.get("pid"), int):
                self.wait_exit(killer["pid"], deadline)
        except (QgaError, AgentTimeout, ToolError):
            pass


class SyncProbe:
    """Whether qemu-guest-agent answers yet, asked in slices of a bounded wait (for readiness).

    One connection and one sync id for the whole watch: the guest-sync-delimited request is
    re-sent every PING_INTERVAL (QEMU holds what is sent before the agent opens its port, so
    the agent answers every copy once it runs); any answer with this id means it is up.
    A connection QEMU closed or refused is made again at the next call.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.sync_id = secrets.randbelow(1 << 31)
        self._request = b"\xff" + json.dumps(
            {"execute": "guest-sync-delimited", "arguments": {"id": self.sync_id}}
        ).encode() + b"\n"
        self._link: Link | None = None
        self._sent_at = -math.inf

    def answered(self, wait: float) -> bool:
        """Whether the agent answered by now, waiting at most `wait` seconds for it."""
        deadline = time.monotonic() + wait
        try:
            if self._link is None:
                self._link = Link(connect(self.socket_path, "guest agent"))
            if time.monotonic() - self._sent_at >= PING_INTERVAL:
                self._link.send(self._request, deadline)
                self._sent_at = time.monotonic()
            while self._link.skip_until(b"\xff", deadline):
                line = self._link.read_line(deadline).lstrip(b"\xff")
                if _sync_return(line) == self.sync_id:
                    return True
        except AgentTimeout:
            pass
        except (AgentClosed, StateError, ToolError, OSError):
            self.close()  # not there yet, or QEMU dropped us: connect again next time
        return False

    def close(self) -> None:
        if self._link is not None:
            self._link.sock.close()
            self._link = None
            self._sent_at = -math.inf


def _sync_return(line: bytes) -> object:
    try:
        reply = json.loads(line)
    except ValueError:
        return None
    return reply.get("return") if isinstance(reply, dict) else None


def _decode(status: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(status.get(key) or "", validate=True)
    except (binascii.Error, TypeError):
        raise ToolError(f"qemu-guest-agent sent undecodable {key}") from None


def _result(argv: Sequence[str], status: dict[str, Any]) -> ExecResult:
    if status.get("out-truncated") or status.get("err-truncated"):
        raise ToolError(f"{argv[0]!r} wrote more than qemu-guest-agent keeps (16 MiB) on stdout or stderr",
                        argv=list(argv), hint="redirect its output to a file in the guest")
    if isinstance(status.get("signal"), int):
        code = 128 + int(status["signal"])
    elif isinstance(status.get("exitcode"), int):
        code = int(status["exitcode"])
    else:
        raise ToolError(f"qemu-guest-agent sent an exec status without an exit code: {status!r}")
    return ExecResult(code, _decode(status, "out-data"), _decode(status, "err-data"))


def run_program(qga: Qga, argv: Sequence[str], timeout: float, stdin: bytes) -> ExecResult:
    """Run `argv` through an already synchronised `qga`: its exit code and output."""
    arguments: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
    if stdin:
        arguments["input-data"] = base64.b64encode(stdin).decode()
    try:
        started = qga.call("guest-exec", arguments, time.monotonic() + TRANSFER_TIMEOUT)
    except QgaError as error:
        if SPAWN_FAILED.search(error.desc):  # as a shell says it: the program is not there
            return ExecResult(127, b"", f"{argv[0]}: {error.desc}\n".encode())
        raise ToolError(f"qemu-guest-agent cannot run {argv[0]!r}: {error.desc}", argv=list(argv)) from None
    if not isinstance(started, dict) or not isinstance(started.get("pid"), int):
        raise ToolError(f"qemu-guest-agent sent an unexpected guest-exec reply: {started!r}")
    pid = int(started["pid"])
    status = qga.wait_exit(pid, time.monotonic() + timeout)
    if status is None:
        qga.kill(pid)
        raise ToolError(f"{argv[0]!r} did not finish within {timeout:g}s in the guest; it was killed",
                        argv=list(argv), hint="give it more time with --timeout")
    return _result(argv, status)


def guest_agent_exec(
    socket_path: Path, argv: Sequence[str], timeout: float, *, stdin: bytes = b""
) -> ExecResult:
    """Run `argv` in the guest through qemu-guest-agent; its exit code, stdout and stderr.

    Raises StateError when the VM is not running, ToolError when the agent does not answer or
    the command runs over `timeout` (it is then killed), SpecError for an empty argv.
    """
    if not argv or not argv[0]:
        raise SpecError("no command given to run in the guest")
    if not timeout > 0 or not math.isfinite(timeout):
        raise SpecError(f"the timeout must be a positive number of seconds, not {timeout!r}")
    begun = time.monotonic()
    with connect(socket_path, "guest agent") as sock:
        qga = Qga(Link(sock))
        with agent_errors(argv, begun, HINT):
            qga.sync(max(1.0, min(timeout, SYNC_TIMEOUT)))
            return run_program(qga, argv, timeout, stdin)
