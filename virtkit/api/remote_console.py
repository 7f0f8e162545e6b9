"""A remote instance's console, shaped as the local one (drivers/console.py Console) for
`virtkit console`: its WebSocket (api/streams.py ConsoleSession) read by a thread into a pipe, so
that the CLI's relay waits on it with select() as on a local console's socket."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from virtkit.errors import StateError

if TYPE_CHECKING:
    from virtkit.api.streams import ConsoleSession, Streams

READ_SIZE = 65536


class RemoteConsole:
    """A connected remote console: fileno() is readable when recv() has something (or the end)."""

    def __init__(self, session: ConsoleSession) -> None:
        self.session = session
        self._read, self._write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._read, False)
        self._closed = threading.Event()
        self._pump = threading.Thread(target=self._forward, name="vk-console", daemon=True)
        self._pump.start()

    @classmethod
    def open(cls, streams: Streams, name: str) -> RemoteConsole:
        return cls(streams.console(name))

    def _forward(self) -> None:
        try:
            while not self._closed.is_set():
                data = self.session.recv(timeout=0.5)
                if data is None:
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(self._write, view) :]
        except OSError:  # the reading end is gone: the console was closed
            pass
        finally:
            os.close(self._write)

    def fileno(self) -> int:
        return self._read

    def recv(self) -> bytes | None:
        """What the console said (b"": nothing yet), or None once it closed."""
        try:
            data = os.read(self._read, READ_SIZE)
        except BlockingIOError:
            return b""
        return data or None

    def sendall(self, data: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self.session.send(data)
        except ConnectionClosed:
            raise StateError("the console does not take input: it closed") from None

    def resize(self, rows: int, columns: int) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self.session.resize(rows, columns)
        except ConnectionClosed:
            return  # the next recv says so

    def close(self) -> None:
        self._closed.set()
        self.session.close()
        self._pump.join(timeout=2.0)
        os.close(self._read)
