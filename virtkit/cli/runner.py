"""The warm runner of a state root: `virtkit run --rm` handed over to a process that has already
imported what running a container takes.

A Python start with the driver's imports costs more than `runc run` itself (docs/benchmarks.md),
so the first `virtkit run --rm` on a root starts this process (and runs its own command the slow
way); the next ones connect to ROOT/run/runner.sock, pass their stdin, stdout and stderr over it
(SCM_RIGHTS) with the parsed command line, and wait for the exit status. For each, the runner
forks a worker that takes those as its own stdio and runs exactly what `virtkit run` would
(cli.fastrun.execute: the same op, the same messages on the same stderr). Signals the user sends to
`virtkit run` (Ctrl-C, SIGTERM, SIGHUP, a window resize) come over the socket and are passed on
to runc, which passes them to the command.

It is one process per state root, not per container: it serves only the user it runs as (root:
the peer's uid, SO_PEERCRED; the socket is 0600), exits after IDLE seconds without a request, when
its socket or its root goes away, and when virtkit's code changes under it (an upgrade: that
request is then refused, and run the slow way).
"""

from __future__ import annotations

import ast
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

SOCKET = Path("run") / "runner.sock"
IDLE = 120.0  # seconds without a request before the runner exits
TICK = 5.0
MAX_REQUEST = 1 << 16
PACKAGE = Path(__file__).resolve().parent.parent


def code_stamp() -> float:
    """The newest modification time of virtkit's modules: a change means an upgrade or an edit."""
    return max(path.stat().st_mtime for path in PACKAGE.rglob("*.py"))


def preload() -> None:
    """Import, once, everything a worker runs (what each `virtkit run` would import again)."""
    import virtkit.cli.fastrun
    import virtkit.drivers.oci.foreground
    import virtkit.drivers.oci.idmap
    import virtkit.drivers.oci.runtime
    import virtkit.ops.oneshots
    import virtkit.ops.run  # noqa: F401


def serve(root: Path) -> None:
    """Accept and run requests for `root` until idle (the process's main loop)."""
    preload()
    path = root / SOCKET
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.unlink(missing_ok=True)
        listener.bind(str(path))
    except OSError:
        return  # another runner just took the place
    os.chmod(path, 0o600)
    listener.listen(16)
    inode, stamp, last = path.stat().st_ino, code_stamp(), time.monotonic()
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    while time.monotonic() - last < IDLE:
        ready, _w, _x = select.select([listener], [], [], TICK)
        if not _still_ours(path, inode):
            return
        if not ready:
            continue
        conn, _addr = listener.accept()
        last = time.monotonic()
        if code_stamp() != stamp:
            _refuse(conn)
            break
        _serve_one(listener, conn, root)
    if _still_ours(path, inode):
        path.unlink(missing_ok=True)


def _still_ours(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _refuse(conn: socket.socket) -> None:
    try:
        conn.sendall(b"retry\n")
    finally:
        conn.close()


def _serve_one(listener: socket.socket, conn: socket.socket, root: Path) -> None:
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
    if uid != os.geteuid():
        conn.close()
        return
    if os.fork() != 0:
        conn.close()
        return
    # The worker. Until it says "started" the client may run the command itself instead; after,
    # never: a command must not run twice, so a failure then is reported, not retried.
    started = False
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # runc is waited for by foreground.py, not reaped
        listener.close()
        options = _receive(conn)
        conn.sendall(b"started\n")
        started = True
        code = _work(conn, root, options)
    except BaseException as error:
        if not started:
            os._exit(70)
        os.write(2, f"Error: internal error in virtkit's runner: {type(error).__name__}: {error}\n".encode())
        code = 125
    try:
        conn.sendall(f"code {code}\n".encode())
    finally:
        os._exit(0)


def _receive(conn: socket.socket) -> dict[str, Any]:
    """The request: its options, with the client's stdin, stdout and stderr made this worker's."""
    message, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 3)
    if len(fds) != 3:
        raise ValueError("a request comes with stdin, stdout and stderr")
    for number, fd in enumerate(fds):
        os.dup2(fd, number)
        os.close(fd)
    options = ast.literal_eval(message.split(b"\n", 1)[0].decode())  # plain values only: no code runs
    if not isinstance(options, dict):
        raise ValueError("a request is a dict of run options")
    return options


def _work(conn: socket.socket, root: Path, options: dict[str, Any]) -> int:
    import resource

    from virtkit.cli import fastrun
    from virtkit.drivers.oci import foreground

    # The caller's open-file limit, not the first caller's: containers get the lower of their soft
    # limit and the caller's hard one (plan.py), so each run gets what it would get in-process.
    soft, hard = (int(n) for n in options.pop("nofile", resource.getrlimit(resource.RLIMIT_NOFILE)))
    _soft, mine = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard, mine), min(hard, mine)))
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # outside runc's wait: clean up, end
        signal.signal(number, _interrupted)
    foreground.FORWARD_ALL = True  # the terminal's signals reach the client, not runc: it sends them on
    threading.Thread(target=_signals, args=(conn,), daemon=True).start()
    return fastrun.run_options(str(root), options)


def _interrupted(_number: int, _frame: object) -> None:
    raise KeyboardInterrupt  # fastrun.execute: the op's own clean-up runs, the exit status is 130


def _signals(conn: socket.socket) -> None:
    """Signal numbers from the client, one a line: raised in this worker, whose handlers (set while
    runc runs, foreground.py) pass them to runc."""
    stream = conn.makefile("rb")
    for line in stream:
        if line.strip().isdigit():
            os.kill(os.getpid(), int(line))


def main() -> None:
    root = Path(sys.argv[1])
    os.umask(0o022)
    os.chdir("/")  # not the first caller's directory: it would pin that filesystem
    serve(root)


if __name__ == "__main__":
    main()
