"""The client side of the warm runner (ops/runner.py): hand a parsed `virtkit run --rm` and this
process's stdio to the state root's runner, pass on the signals the user sends, return the exit
status.

This is the whole cost of a warm `virtkit run`, so it imports only C modules besides os and sys:
`_socket` and `_signal` (their Python wrappers load enum), and no json (which loads re): the request
goes as a Python literal of plain values (the runner reads it with ast.literal_eval), the answer as
one line, "code N" or "retry".

None means "no runner answered": the caller runs the command itself and starts a runner for the
next time.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.py loads enum
import _socket
import os
import sys

TYPE_CHECKING = False  # typing is one import too many here; mypy takes the name as typing's
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

SOCKET = "run/runner.sock"  # as ops.runner.SOCKET
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGWINCH)


def run(root: str, options: dict[str, object]) -> int | None:
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.connect(os.path.join(root, SOCKET))
    except OSError:
        conn.close()
        return None
    try:
        fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2))
        conn.sendmsg([repr(options).encode() + b"\n"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        previous = {number: _signal.signal(number, _sender(conn)) for number in FORWARDED}
        try:
            answer = _answer(conn)
        finally:
            for number, handler in previous.items():
                _signal.signal(number, handler)
    except OSError:
        return None
    finally:
        conn.close()
    word, _, value = answer.partition(" ")
    if word != "code" or not value.lstrip("-").isdigit():
        return None  # refused (virtkit changed under it) or it failed before running anything
    return int(value)


def _sender(conn: _socket.socket) -> Callable[[int, FrameType | None], None]:
    def send(number: int, _frame: FrameType | None) -> None:
        try:  # noqa: SIM105  (contextlib is one import more on the path this module keeps short)
            conn.sendall(f"{number}\n".encode())
        except OSError:
            pass

    return send


def _answer(conn: _socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)  # retried by Python when a forwarded signal interrupts it
        if not chunk:
            return ""
        data += chunk
    return data.decode(errors="replace").strip()


def can_serve(root: str) -> bool:
    """Whether a runner can live in `root` (an existing state root with its run directory)."""
    return os.path.isdir(os.path.join(root, "run"))


def start_runner(root: str) -> None:
    """Start the state root's runner in the background (its own session, no stdio), for next time."""
    devnull = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0), (os.POSIX_SPAWN_DUP2, 0, 1),
               (os.POSIX_SPAWN_DUP2, 0, 2)]  # fmt: skip
    try:  # noqa: SIM105
        os.posix_spawn(sys.executable, [sys.executable, "-m", "virtkit.ops.runner", root], os.environ,
                       file_actions=devnull, setsid=True)  # fmt: skip
    except OSError:
        pass  # no runner: every run stays the slow way, which works
