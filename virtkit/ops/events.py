"""Lifecycle events: what happened to instances and operations, for `virtkit monitor` and the API.

Events are JSON lines appended to ROOT/events.jsonl by whichever process acted (the CLI or the
server), so a monitor sees local commands and API requests alike. A line is written with one
write(2) on an O_APPEND descriptor under an exclusive flock, so lines never interleave. The file
is rotated to events.jsonl.1 past MAX_BYTES; a follower notices the new file and goes on from its
start. Writing an event never fails the action that caused it: a failure is logged and dropped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE = "events.jsonl"
MAX_BYTES = 8 * 1024 * 1024
POLL = 0.1
APPEND_ATTEMPTS = 10
TYPES = ("instance", "operation", "network", "storage", "error")


def path_of(root: Path) -> Path:
    return root / FILE


def emit(root: Path, type_: str, action: str, target: str = "", **details: Any) -> None:
    """Record one event: `emit(root, "instance", "started", "web1")`."""
    event = {"time": time.time(), "type": type_, "action": action, "target": target}
    if details:
        event["details"] = details
    line = (json.dumps(event, default=str, separators=(",", ":")) + "\n").encode()
    try:
        _append(path_of(root), line)
    except OSError as exc:
        log.warning("could not record event %s %s %s: %s", type_, action, target, exc)


def _append(path: Path, line: bytes) -> None:
    """Append `line` to the current events file, rotating it first if the line would take it past
    MAX_BYTES. The file is checked to still be the current one once its lock is held: a writer
    that waited while another rotated would otherwise write into (or rotate again) the old file."""
    for _attempt in range(APPEND_ATTEMPTS):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            opened = os.fstat(fd)
            if not _is_current(path, opened):
                continue  # renamed away while we waited: open the new one
            if opened.st_size and opened.st_size + len(line) > MAX_BYTES:
                os.replace(path, path.with_name(FILE + ".1"))
                continue  # the line goes into the new file
            os.write(fd, line)
            return
        finally:
            os.close(fd)
    raise OSError(f"{path} kept being rotated by other writers")


def _is_current(path: Path, opened: os.stat_result) -> bool:
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    return (now.st_ino, now.st_dev) == (opened.st_ino, opened.st_dev)


class Tail:
    """The events written since it last looked, in order, across rotation; `read()` never waits,
    so a thread (follow) or an event loop (the API's stream) can poll it."""

    def __init__(self, root: Path, *, types: frozenset[str] | None = None, since_end: bool = True) -> None:
        self.path = path_of(root)
        self.types = types
        self._since_end = since_end
        self._handle: Any = None
        self._inode: int | None = None
        self._buffer = b""

    def read(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            if self._handle is None:
                self._handle, self._inode = _open(self.path, seek_end=self._since_end)
                self._since_end = False  # a rotated file is read from its start
                if self._handle is None:
                    return found
            chunk = self._handle.read()
            if not chunk and _rotated(self.path, self._inode):
                chunk = self._handle.read()  # written before the rename, after our last read
                if not chunk:
                    self.close()
                    continue
            if not chunk:
                return found
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                event = _parse(line)
                if event is not None and (self.types is None or event.get("type") in self.types):
                    found.append(event)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle, self._buffer = None, b""


def follow(
    root: Path,
    *,
    types: frozenset[str] | None = None,
    stop: threading.Event | None = None,
    since_end: bool = True,
    clock: Callable[[], float] = time.monotonic,
    timeout: float | None = None,
    heartbeat: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Events as they are written (from the end of the file unless `since_end` is False),
    only those whose type is in `types`, until `stop` is set or `timeout` seconds have passed.
    With `heartbeat`, an empty dict is yielded after that many seconds without an event (a
    streaming server then notices a client that went away)."""
    deadline = None if timeout is None else clock() + timeout
    quiet_since = clock()
    tail = Tail(root, types=types, since_end=since_end)
    try:
        while not (stop is not None and stop.is_set()) and (deadline is None or clock() < deadline):
            found = tail.read()
            if found:
                quiet_since = clock()
                yield from found
                continue
            if heartbeat is not None and clock() - quiet_since >= heartbeat:
                quiet_since = clock()
                yield {}
            (stop.wait(POLL) if stop is not None else time.sleep(POLL))
    finally:
        tail.close()


def _open(path: Path, *, seek_end: bool) -> tuple[Any, int | None]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - kept open across yields, closed by follow()
    except FileNotFoundError:
        return None, None
    if seek_end:
        handle.seek(0, os.SEEK_END)
    return handle, os.fstat(handle.fileno()).st_ino


def _rotated(path: Path, inode: int | None) -> bool:
    try:
        return path.stat().st_ino != inode
    except FileNotFoundError:
        return False


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
