"""`virtkit console NAME`: attach the terminal to an instance's serial console (Ctrl-] detaches);
`--log` prints what the console has said since the instance was made."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from virtkit.cli.params import INSTANCE_NAME

if TYPE_CHECKING:
    from virtkit.api.remote_console import RemoteConsole
    from virtkit.drivers.console import Console
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
    console = _open(name)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"Connected to the console of {name}; Ctrl-] detaches.", err=True)
    try:
        with _raw_terminal(interactive, console):
            _relay(console, interactive)
    finally:
        console.close()
    if interactive:
        click.echo(f"\r\nDetached from {name}.", err=True)


def _open(name: str) -> Console | RemoteConsole:
    """This host's console of NAME, or the remote's in effect over its WebSocket."""
    from virtkit.cli.context import get_context
    from virtkit.cli.lifecycle import lifecycle

    ctx = get_context()
    if not ctx.is_remote():
        return lifecycle().open_console(name)
    from virtkit.api.remote_console import RemoteConsole
    from virtkit.cli.backup import remote_streams

    return RemoteConsole.open(remote_streams(), name)


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
def _raw_terminal(interactive: bool, console: Console | RemoteConsole) -> Iterator[None]:
    """The user's terminal in raw mode (keys go to the console as typed), its size given to the
    console's terminal now and whenever the window changes."""
    if not interactive:
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def resize(*_args: object) -> None:
        size = os.get_terminal_size(fd)
        console.resize(size.lines, size.columns)

    resize()
    previous = signal.signal(signal.SIGWINCH, resize)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)


def _relay(conn: Console | RemoteConsole, interactive: bool) -> None:
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
                said = conn.recv()
                if said is None:
                    raise StateError("the console closed: the instance stopped")
                stdout.write(said)
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
