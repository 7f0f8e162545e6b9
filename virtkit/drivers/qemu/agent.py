"""Running a command in a VM's guest, through the virtio-serial port its agent listens on.

Two agents, each behind a QEMU unix-socket chardev (``server=on,wait=off``) of a virtio-serial port:

- the tiny image's own agent (port ``org.virtkit.agent``; the protocol and the guest side are in
  virtkit.images.tinyagent): `exec_in_guest`;
- qemu-guest-agent in Debian images (port ``org.qemu.guest_agent.0``): `guest_agent_exec`, in
  virtkit.drivers.qemu.guestagent.

Both first resynchronise the stream, since a previous client may have left a reply half-read:
the tiny agent with PING and a fresh nonce, skipping everything before its PONG. Waits are
bounded: the agent must answer the ping within `SYNC_TIMEOUT` (or the command's timeout when
shorter); the result must come within the command's timeout plus `GRACE`; its bytes then get
`TRANSFER_TIMEOUT`. Errors: no socket or nobody listening -> StateError (the VM is not running);
no answer, a command over its timeout, oversized output -> ToolError; bad argv -> SpecError.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

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
from virtkit.drivers.qemu.guestagent import guest_agent_exec
from virtkit.errors import SpecError, StateError, ToolError
from virtkit.images.tinyagent import ARGV_MAX, OUTPUT_MAX

__all__ = ["QGA_PORT", "encode_argv", "exec_in_guest", "exec_on_port", "guest_agent_exec", "ping_agent"]

log = logging.getLogger(__name__)

QGA_PORT = "org.qemu.guest_agent.0"  # the port qemu-guest-agent opens (Debian images)
HINT = "is the guest still booting? Does its image have the virtkit agent (rebuild the tiny image)?"


def encode_argv(argv: Sequence[str]) -> bytes:
    """The argv as the tiny agent takes it: each argument in UTF-8 followed by a NUL byte."""
    if not argv:
        raise SpecError("no command given to run in the guest")
    if not argv[0]:
        raise SpecError("the command to run in the guest has an empty name")
    encoded = b""
    for arg in argv:
        data = arg.encode("utf-8", "surrogateescape")  # arguments from a POSIX argv may hold any bytes
        if b"\0" in data:
            raise SpecError(f"a command argument cannot hold a NUL byte: {arg!r}")
        encoded += data + b"\0"
    if len(encoded) > ARGV_MAX:
        raise SpecError(f"the command line is {len(encoded)} bytes; the guest agent takes at most {ARGV_MAX}")
    return encoded


def _sync(link: Link, wait: float) -> None:
    """Ping (repeatedly) until the agent answers this ping; everything before its answer is stale."""
    nonce = secrets.token_hex(8)
    pong = f"PONG {nonce}\n".encode()
    deadline = time.monotonic() + wait
    while True:
        link.send(f"PING {nonce}\n".encode(), deadline)
        if link.skip_until(pong, min(deadline, time.monotonic() + PING_INTERVAL)):
            return
        if time.monotonic() >= deadline:
            raise AgentTimeout


def _read_result(link: Link, request_id: str, argv: Sequence[str], timeout: float) -> ExecResult:
    deadline = time.monotonic() + timeout + GRACE
    while True:
        fields = link.read_line(deadline).decode("ascii", "replace").split()
        if fields and fields[0] == "PONG":  # answers to the extra pings of the sync
            continue
        if len(fields) >= 3 and fields[:2] == ["ERROR", request_id]:
            raise ToolError(f"the guest agent refused to run {argv[0]!r}: {fields[2].replace('-', ' ')}",
                            argv=list(argv))
        if len(fields) != 6 or fields[:2] != ["RESULT", request_id] or not all(
            f.isdigit() for f in fields[3:]
        ):
            raise ToolError(f"the guest agent sent an unexpected reply: {' '.join(fields)[:200]!r}")
        status, code, out_size, err_size = fields[2], int(fields[3]), int(fields[4]), int(fields[5])
        if max(out_size, err_size) > OUTPUT_MAX:
            raise ToolError(f"the guest agent announced {max(out_size, err_size)} bytes of output")
        transfer = time.monotonic() + TRANSFER_TIMEOUT
        stdout = link.read_exact(out_size, transfer)
        stderr = link.read_exact(err_size, transfer)
        return _finish(argv, timeout, status, ExecResult(code, stdout, stderr))


def _finish(argv: Sequence[str], timeout: float, status: str, result: ExecResult) -> ExecResult:
    tail = result.stderr[-2000:].decode(errors="replace")
    if status == "timeout":
        raise ToolError(f"{argv[0]!r} did not finish within {timeout:g}s in the guest; it was killed",
                        argv=list(argv), stderr=tail, hint="give it more time with --timeout")
    if status == "toolarge":
        raise ToolError(f"{argv[0]!r} wrote more than {OUTPUT_MAX // (1 << 20)} MiB on stdout or stderr",
                        argv=list(argv), hint="redirect its output to a file in the guest")
    if status != "ok":
        raise ToolError(f"the guest agent sent an unknown status {status!r}")
    return result


def exec_in_guest(
    socket_path: Path, argv: Sequence[str], timeout: float, *, stdin: bytes = b""
) -> ExecResult:
    """Run `argv` (exactly as given, no shell) in the guest of the tiny image and return its result.

    `timeout` bounds the command in the guest (which kills it and its process group when it
    runs over). Raises StateError when the VM is not running, ToolError when the agent does not
    answer, the command runs over its timeout or writes more than OUTPUT_MAX bytes.
    """
    if not timeout > 0 or not math.isfinite(timeout):
        raise SpecError(f"the timeout must be a positive number of seconds, not {timeout!r}")
    encoded = encode_argv(argv)
    if len(stdin) > OUTPUT_MAX:
        raise SpecError(f"stdin is {len(stdin)} bytes; the guest agent takes at most {OUTPUT_MAX}")
    request_id = secrets.token_hex(8)
    started = time.monotonic()
    with connect(socket_path) as sock:
        link = Link(sock)
        wait = max(1.0, min(timeout, SYNC_TIMEOUT))
        with agent_errors(argv, started, HINT):
            _sync(link, wait)
            synced = time.monotonic()
            header = f"EXEC {request_id} {timeout:.3f} {len(encoded)} {len(stdin)}\n".encode()
            link.send(header + encoded + stdin, time.monotonic() + TRANSFER_TIMEOUT)
            result = _read_result(link, request_id, argv, timeout)
    log.debug("exec %r: exit %d in %.3f s (%.3f s to sync)", argv[0], result.exit_code,
              time.monotonic() - started, synced - started)
    return result


def ping_agent(socket_path: Path, timeout: float) -> float:
    """Seconds the tiny image's agent took to answer a ping; ToolError when it did not in `timeout`."""
    started = time.monotonic()
    with connect(socket_path) as sock:
        try:
            _sync(Link(sock), timeout)
        except AgentTimeout:
            raise ToolError(f"the guest agent did not answer within {timeout:g}s", hint=HINT) from None
        except AgentClosed:
            raise StateError("the VM stopped (QEMU closed the agent socket)") from None
    return time.monotonic() - started


def exec_on_port(
    port_name: str, socket_path: Path, argv: Sequence[str], timeout: float, *, stdin: bytes = b""
) -> ExecResult:
    """Run `argv` through whichever agent the image puts on `port_name` (its "agent_port" property)."""
    run = guest_agent_exec if port_name == QGA_PORT else exec_in_guest
    return run(socket_path, argv, timeout, stdin=stdin)
