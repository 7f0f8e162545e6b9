"""Atomic, durable replacement of small files kept in the state root (saved runtimes, configs).

`atomic_write` writes a temporary file beside the target, fsyncs it, renames it over the target and
fsyncs the directory: a reader, or a crash at any instant, sees the old content or the new one,
never a mix. A writer killed mid-way leaves its temporary file behind; such files are named
``.<target>.vktmp.<pid>.<token>`` so `clean_stale_temps` can recognise and remove them once their
writer is gone. `atomic_write` removes the stale ones of its own target, and opening a state root
cleans the root directory.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from virtkit.errors import StoreError
from virtkit.logs import get_logger

log = get_logger(__name__)

TEMP_MARKER = ".vktmp."
# No atomic_write of a small file takes this long: an older temporary file is stale even if a
# process with its writer's pid is alive (the pid was reused).
STALE_AGE = 3600.0
# Keep temporary names within NAME_MAX (255) whatever the target's length.
_MAX_STEM = 200
_TEMP_RE = re.compile(r"\.(?P<stem>.*)\.vktmp\.(?P<pid>[0-9]+)\.(?P<token>[0-9a-f]{8})", re.DOTALL)


def temp_name(target: str, pid: int | None = None) -> str:
    """The temporary file name `atomic_write` uses for `target` (a base name)."""
    pid = os.getpid() if pid is None else pid
    return f".{target[:_MAX_STEM]}{TEMP_MARKER}{pid}.{os.urandom(4).hex()}"


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o600) -> None:
    """Replace the file at `path` with `data` (str is UTF-8 encoded), with permissions `mode`.

    On any failure the old file is left intact, the temporary file is removed, and StoreError says
    what went wrong.
    """
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    directory = target.parent
    clean_stale_temps(directory, target=target.name)
    tmp = directory / temp_name(target.name)
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        created = True
        try:
            os.fchmod(fd, mode)  # the umask must not weaken or widen what the caller asked for
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as exc:
        if created:
            _remove_quietly(tmp)
        if isinstance(exc, OSError):
            raise StoreError(
                f"cannot write {target}: {exc.strerror or exc}",
                hint="check that the file system is writable and has free space",
            ) from exc
        raise
    try:
        fsync_dir(directory)
    except OSError as exc:
        raise StoreError(
            f"wrote {target} but could not make it durable: {exc.strerror or exc}",
            hint="check the file system's health (dmesg)",
        ) from exc


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_temps(directory: str | os.PathLike[str], *, target: str | None = None) -> list[Path]:
    """Remove temporary files left in `directory` by killed `atomic_write` calls; return them.

    A temporary file is stale when the process that made it is gone, or when it is older than
    STALE_AGE. With `target`, only the temporary files of that file name are considered.
    """
    removed: list[Path] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed  # a missing directory has nothing to clean; writing into it will say why
    for name in names:
        match = _TEMP_RE.fullmatch(name)
        if not match or (target is not None and match["stem"] != target[:_MAX_STEM]):
            continue
        path = Path(directory, name)
        if _is_stale(path, int(match["pid"])) and _remove_quietly(path):
            log.info("removed %s, left by an interrupted write", path)
            removed.append(path)
    return removed


def _is_stale(path: Path, pid: int) -> bool:
    try:
        age = time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AGE or not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_quietly(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("could not remove temporary file %s: %s", path, exc)
        return False
    return True
