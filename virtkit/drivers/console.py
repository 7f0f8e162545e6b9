"""An instance's console as `virtkit console` talks to it: bytes in, bytes out, a window size.

Two kinds behind one face: a VM's serial console is QEMU's Unix stream socket, raw both ways; a
container's is conmon's attach socket (SOCK_SEQPACKET), whose every message from the container
starts with one byte naming the stream (2 stdout, 3 stderr), and whose window size is set by a
line written to conmon's control FIFO ("1 ROWS COLUMNS").
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from virtkit.errors import StateError

CONNECT_TIMEOUT = 5.0
SEND_TIMEOUT = 10.0  # a console that reads nothing for this long is given up on
STREAMS = (2, 3)  # conmon's stdout and stderr markers
RESIZE = 1  # conmon's control message: a new window size


class Console:
    """A connected console."""

    def __init__(self, conn: socket.socket, control: Path | None = None, framed: bool = False) -> None:
        self.conn = conn
        self.control = control
        self.framed = framed

    @classmethod
    def connect(cls, name: str, path: Path, *, control: Path | None = None, framed: bool = False) -> Console:
        kind = socket.SOCK_SEQPACKET if framed else socket.SOCK_STREAM
        conn = socket.socket(socket.AF_UNIX, kind)
        try:
            conn.settimeout(CONNECT_TIMEOUT)
            conn.connect(str(path))
        except OSError as error:
            conn.close()
            raise StateError(f"cannot attach to the console of {name!r}: {error.strerror or error}") from None
        conn.setblocking(False)
        return cls(conn, control, framed)

    def fileno(self) -> int:
        return self.conn.fileno()

    def recv(self) -> bytes | None:
        """What the console said (b"": nothing for the user), or None once it closed."""
        try:
            data = self.conn.recv(65536)
        except BlockingIOError:
            return b""
        except OSError:
            return None  # reset: as closed
        if not data:
            return None
        if self.framed:
            return data[1:] if data[0] in STREAMS else b""
        return data

    def sendall(self, data: bytes) -> None:
        """Send it all, waiting (bounded) while the other side is not reading."""
        self.conn.settimeout(SEND_TIMEOUT)
        try:
            self.conn.sendall(data)
        except OSError as error:
            raise StateError(f"the console does not take input: {error.strerror or error}") from None
        finally:
            self.conn.setblocking(False)

    def resize(self, rows: int, columns: int) -> None:
        """Tell the console's terminal its window size (nothing to do for a serial line)."""
        if self.control is None:
            return
        try:
            fd = os.open(self.control, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # conmon is gone: the next recv says so
        try:
            os.write(fd, f"{RESIZE} {rows} {columns}\n".encode())
        finally:
            os.close(fd)

    def close(self) -> None:
        self.conn.close()
