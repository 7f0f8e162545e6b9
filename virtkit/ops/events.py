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
TYPES = ("instance", "operation", "network", "storage", "error")


def path_of(root: Path) -> Path:
    return root / FILE


def emit(root: Path, type_: str, action: str, target: str = "", **details: Any) -> None:
    """Record one event: `emit(root, "instance", "started", "web1")`."""
    event = {"time": time.time(), "type": type_, "action": action, "target": target}
    if details:
        event["details"] = details
    line = (json.dumps(event, default=str, separators=(",", ":")) + "\n").encode()
    path = path_of(root)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size + len(line) > MAX_BYTES:
                os.replace(path, path.with_name(FILE + ".1"))
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("could not record event %s %s %s: %s", type_, action, target, exc)


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
    path = path_of(root)
    deadline = None if timeout is None else clock() + timeout
    quiet_since = clock()
    handle = None
    inode = None
    buffer = b""
    try:
        while not (stop is not None and stop.is_set()) and (deadline is None or clock() < deadline):
            if handle is None:
                handle, inode = _open(path, seek_end=since_end)
                since_end = False  # a rotated file is read from its start
            if handle is not None:
                chunk = handle.read()
                if chunk:
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        event = _parse(line)
                        if event is not None and (types is None or event.get("type") in types):
                            quiet_since = clock()
                            yield event
                    continue
                if _rotated(path, inode):
                    handle.close()
                    handle, buffer = None, b""
                    continue
            if heartbeat is not None and clock() - quiet_since >= heartbeat:
                quiet_since = clock()
                yield {}
            (stop.wait(POLL) if stop is not None else time.sleep(POLL))
    finally:
        if handle is not None:
            handle.close()


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
