"""A guest agent's socket: connecting to QEMU's chardev, and reading it with deadlines.

Shared by the tiny image's agent (virtkit.drivers.qemu.agent) and qemu-guest-agent
(virtkit.drivers.qemu.guestagent). Every wait ends at an explicit deadline (time.monotonic);
running out raises AgentTimeout and QEMU closing the socket AgentClosed, which the callers turn
into VirtkitErrors that say which command waited on what.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from virtkit.errors import StateError, ToolError

SYNC_TIMEOUT = 10.0  # the longest wait for the agent to answer a ping
PING_INTERVAL = 0.5  # pings are repeated: one sent before the agent opened its port may be lost
GRACE = 5.0  # beyond the command's timeout, for the agent's own work under emulation
TRANSFER_TIMEOUT = 60.0  # sending stdin, receiving output (16 MiB through virtio-serial under TCG)
LINE_MAX = 4096  # a reply header


class AgentTimeout(Exception):
    """Internal: a bounded wait on the agent's socket ran out."""


class AgentClosed(Exception):
    """Internal: QEMU closed the socket (the VM stopped, or another client took the port)."""


@contextmanager
def agent_errors(argv: Sequence[str], started: float, hint: str) -> Iterator[None]:
    """Turn what can go wrong on an agent's socket into the errors a user reads."""
    try:
        yield
    except AgentTimeout:
        waited = time.monotonic() - started
        raise ToolError(
            f"the guest agent did not answer within {waited:.0f}s", argv=list(argv), hint=hint
        ) from None
    except AgentClosed:
        raise StateError(
            "the VM stopped while running the command (QEMU closed the agent socket)",
            hint="see virtkit show NAME",
        ) from None
    except OSError as error:
        raise ToolError(f"lost the connection to the guest agent: {error}", argv=list(argv)) from None


class Link:
    """A connected stream socket read with deadlines: lines and exact byte counts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def fill(self, deadline: float) -> None:
        """Receive once more into the buffer, waiting until `deadline` (time.monotonic)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AgentTimeout
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            raise AgentTimeout from None
        if not chunk:
            raise AgentClosed
        self.buffer += chunk

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentTimeout
            self.sock.settimeout(remaining)
            try:
                sent = self.sock.send(view)
            except TimeoutError:
                raise AgentTimeout from None
            view = view[sent:]

    def read_line(self, deadline: float, limit: int = LINE_MAX) -> bytes:
        """The next line, without its newline; ToolError when it is longer than `limit`."""
        searched = 0
        while (end := self.buffer.find(b"\n", searched)) < 0:
            if len(self.buffer) > limit:
                raise ToolError(f"the guest agent sent a line longer than {limit} bytes")
            searched = len(self.buffer)
            self.fill(deadline)
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line

    def read_exact(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self.fill(deadline)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def skip_until(self, marker: bytes, deadline: float) -> bool:
        """Drop everything up to and including `marker`; False when it has not come yet by now.

        Waits at most until `deadline` for more bytes; keeps only a marker's length of the tail.
        """
        while (found := self.buffer.find(marker)) < 0:
            del self.buffer[: max(0, len(self.buffer) - len(marker) + 1)]
            try:
                self.fill(deadline)
            except AgentTimeout:
                return False
        del self.buffer[: found + len(marker)]
        return True


def connect(socket_path: Path, what: str = "agent") -> socket.socket:
    """Connect to the QEMU chardev socket of a guest's agent port; StateError when nobody listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(SYNC_TIMEOUT)
    try:
        sock.connect(str(socket_path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise StateError(
            f"the VM is not running (nothing listens on its {what} socket {socket_path})",
            hint="start it first: virtkit start NAME",
        ) from None
    except OSError as error:
        sock.close()
        raise ToolError(f"cannot connect to the guest {what} socket {socket_path}: {error}") from None
    return sock
