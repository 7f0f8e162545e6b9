"""`virtkit console NAME`: attach the terminal to an instance's serial console (Ctrl-] detaches);
`--log` prints what the console has said since the instance was made."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import click

from virtkit.cli.params import INSTANCE_NAME
from virtkit.errors import StateError

DETACH = b"\x1d"  # Ctrl-]
QUIET_AFTER_EOF = 0.5  # with piped input: how long the console may stay silent before we leave
MAX_AFTER_EOF = 10.0


@click.command("console")
@click.argument("name", type=INSTANCE_NAME)
@click.option("--log", "show_log", is_flag=True, help="Print the console log and exit.")
def console_command(name: str, show_log: bool) -> None:
    """Attach to instance NAME's serial console; Ctrl-] detaches.

    With input from a pipe, the lines are sent and the console's answer printed until it is quiet.
    """
    from virtkit.cli.lifecycle import lifecycle

    if show_log:
        _write(lifecycle().logs(name))
        return
    _log, sock_path = lifecycle().console(name)
    if sock_path is None:
        raise StateError(
            f"instance {name!r} is not running", hint=f"see its log: virtkit console --log {name}"
        )
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"Connected to the console of {name}; Ctrl-] detaches.", err=True)
    with _connected(sock_path, name) as conn, _raw_terminal(interactive):
        _relay(conn, interactive)
    if interactive:
        click.echo(f"\r\nDetached from {name}.", err=True)


@click.command("logs")
@click.argument("name", type=INSTANCE_NAME)
@click.option("--follow", "-f", is_flag=True, help="Keep printing what it writes, until it stops.")
def logs_command(name: str, follow: bool) -> None:
    """Print what instance NAME has written to its console (a container: its init's output)."""
    from virtkit.cli.lifecycle import lifecycle

    _write(lifecycle().logs(name, follow=follow))


def _write(chunks: Iterator[bytes]) -> None:
    for chunk in chunks:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


@contextlib.contextmanager
def _connected(path: Path, name: str) -> Iterator[socket.socket]:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5)
        conn.connect(str(path))
    except OSError as error:
        conn.close()
        raise StateError(f"cannot attach to the console of {name!r}: {error.strerror or error}") from None
    conn.setblocking(False)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _raw_terminal(interactive: bool) -> Iterator[None]:
    if not interactive:
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _relay(conn: socket.socket, interactive: bool) -> None:
    """Copy stdin to the console and the console to stdout until Ctrl-], the console closes, or
    (piped input) stdin ends and the console has gone quiet."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.buffer
    selector = selectors.DefaultSelector()
    selector.register(conn, selectors.EVENT_READ)
    selector.register(stdin, selectors.EVENT_READ)
    eof_at: float | None = None
    last_output = time.monotonic()
    while True:
        now = time.monotonic()
        if eof_at is not None and (now - last_output > QUIET_AFTER_EOF or now - eof_at > MAX_AFTER_EOF):
            return
        for key, _ in selector.select(timeout=0.1):
            if key.fileobj is conn:
                data = conn.recv(65536)
                if not data:
                    raise StateError("the console closed: the instance stopped")
                stdout.write(data)
                stdout.flush()
                last_output = time.monotonic()
                continue
            data = os.read(stdin, 4096)
            if interactive and DETACH in data:
                conn.sendall(data.split(DETACH, 1)[0])
                return
            if not data:
                selector.unregister(stdin)
                eof_at = last_output = time.monotonic()
                continue
            conn.sendall(data)
