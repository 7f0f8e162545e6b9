"""Exclusive per-object locks shared by every virtkit process on a host.

One lock file per object, ``<locks dir>/<kind>/<name>.lock``, held with flock(2). The kernel drops
a flock when the process holding it dies — even by `kill -9` — so a crashed virtkit never leaves
an object locked; a row in the database could not promise that. Waiting is bounded: a
non-blocking attempt is retried with short sleeps until the deadline, then BusyError names the
holder. Lock files are never deleted: unlinking one while another process waits on it would let
two processes "hold" the same lock on different inodes.

Within one process a thread may re-enter a lock it holds (an operation calling another on the same
instance); other threads of the process wait like other processes do. Lock descriptors are
close-on-exec so a QEMU or conmon started while a lock is held does not inherit it.
"""

from __future__ import annotations

import fcntl
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from virtkit.errors import BusyError, StoreError
from virtkit.logs import get_logger

log = get_logger(__name__)

_FIRST_DELAY = 0.005
_MAX_DELAY = 0.1


@dataclass
class _Held:
    fd: int
    pid: int
    thread: int


# Locks this process holds, by lock file path: what makes re-entry by the owning thread possible.
_held: dict[str, _Held] = {}
_guard = threading.Lock()


def lock_path(locks_dir: str | os.PathLike[str], kind: str, name: str) -> Path:
    """The lock file of one object. Any kind and name map to a single file inside `locks_dir`."""
    parts = []
    for what, value in (("kind", kind), ("name", name)):
        if value in ("", ".", ".."):
            raise ValueError(f"invalid lock {what} {value!r}")
        parts.append(quote(value, safe=""))
    return Path(locks_dir, parts[0], parts[1] + ".lock")


@contextmanager
def hold(locks_dir: str | os.PathLike[str], kind: str, name: str, timeout: float) -> Iterator[None]:
    """Hold the lock of object `kind`/`name` for the duration of the `with` block.

    Raises BusyError when another process (or thread) still holds it after `timeout` seconds.
    """
    if not (timeout >= 0 and math.isfinite(timeout)):
        raise ValueError(f"lock timeout must be a finite number of seconds >= 0, not {timeout!r}")
    path = lock_path(locks_dir, kind, name)
    key = str(path)
    me = _Held(fd=-1, pid=os.getpid(), thread=threading.get_ident())
    with _guard:
        held = _held.get(key)
        reentered = held is not None and (held.pid, held.thread) == (me.pid, me.thread)
    if reentered:
        yield
        return
    me.fd = _acquire(path, kind, name, timeout)
    with _guard:
        _held[key] = me
    try:
        yield
    finally:
        with _guard:
            del _held[key]
        os.close(me.fd)  # closing the only descriptor of this open file releases the flock


def _acquire(path: Path, kind: str, name: str, timeout: float) -> int:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(
            f"cannot open the lock of {kind} {name!r} ({path}): {exc.strerror or exc}",
            hint="check that the state root is writable",
        ) from exc
    try:
        _wait_for_flock(fd, kind, name, timeout)
        _record_holder(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _wait_for_flock(fd: int, kind: str, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = _FIRST_DELAY
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot lock {kind} {name!r}: {exc.strerror or exc}") from exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BusyError(
                f"{kind} {name!r} is busy: {_describe_holder(fd)}",
                hint="wait for that operation to finish, then retry",
            )
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_DELAY)


def _record_holder(fd: int) -> None:
    """Write who holds the lock into the lock file, for the BusyError of whoever waits next."""
    info = f"{os.getpid()} {time.time():.3f}\n".encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
    except OSError as exc:  # only the message of a later BusyError loses detail
        log.debug("could not record lock holder: %s", exc)


def _describe_holder(fd: int) -> str:
    try:
        pid_text, since_text = os.pread(fd, 64, 0).decode().split()
        pid, since = int(pid_text), float(since_text)
    except (OSError, ValueError, UnicodeDecodeError):
        return "another virtkit operation holds its lock"
    held_for = max(0.0, time.time() - since)
    text = f"process {pid} has held its lock for {held_for:.0f}s"
    command = _command_of(pid)
    return f"{text} ({command})" if command else text


def _command_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    words = raw.decode(errors="replace").split("\0")[:-1] or [""]
    # "python3 virtkit start web1" says more than "/usr/lib/.../python3 /usr/local/bin/virtkit ...".
    words[0] = os.path.basename(words[0])
    if "python" in words[0] and len(words) > 1 and not words[1].startswith("-"):
        words[1] = os.path.basename(words[1])
    command = " ".join(words)
    return command if len(command) <= 80 else command[:77] + "..."
