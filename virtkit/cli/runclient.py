"""The client side of the warm runner (cli/runner.py): hand a parsed `virtkit run --rm` and this
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
import resource
import sys

TYPE_CHECKING = False  # typing is one import too many here; mypy takes the name as typing's
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

SOCKET = "run/runner.sock"  # as cli.runner.SOCKET
CANNOT_RUN = 125  # as fastrun.CANNOT_RUN
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
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
        request = {**options, "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)}
        conn.sendmsg([repr(request).encode() + b"\n"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
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
    lines = answer.split("\n")
    word, _, value = lines[-1].partition(" ")
    if word == "code" and value.lstrip("-").isdigit():
        return int(value)
    if lines[0] != "started":
        return None  # refused (virtkit changed under it) or gone before it ran anything: run it here
    sys.stderr.write("Error: virtkit's runner ended before the command did; its outcome is unknown\n")
    return CANNOT_RUN  # never run twice


def _sender(conn: _socket.socket) -> Callable[[int, FrameType | None], None]:
    def send(number: int, _frame: FrameType | None) -> None:
        try:  # noqa: SIM105  (contextlib is one import more on the path this module keeps short)
            conn.sendall(f"{number}\n".encode())
        except OSError:
            pass

    return send


def _answer(conn: _socket.socket) -> str:
    """Everything the runner said ("started", then "code N"; or "retry"), up to its last line."""
    data = b""
    while not data.endswith(b"\n") or data == b"started\n":
        chunk = conn.recv(4096)  # retried by Python when a forwarded signal interrupts it
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def can_serve(root: str) -> bool:
    """Whether a runner can live in `root` (an existing state root with its run directory)."""
    return os.path.isdir(os.path.join(root, "run"))


def start_runner(root: str) -> None:
    """Start the state root's runner in the background (its own session, no stdio), for next time."""
    devnull = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0), (os.POSIX_SPAWN_DUP2, 0, 1),
               (os.POSIX_SPAWN_DUP2, 0, 2)]  # fmt: skip
    try:
        # -I: no current directory on sys.path, no PYTHON* variables (root must not import a
        # virtkit planted in the directory it happens to be in); a clean environment, as a service.
        argv = [sys.executable, "-I", "-m", "virtkit.cli.runner", os.path.abspath(root)]
        os.posix_spawn(sys.executable, argv, {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, file_actions=devnull,
                       setsid=True)  # fmt: skip
    except OSError:
        pass  # no runner: every run stays the slow way, which works
