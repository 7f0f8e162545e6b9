"""The state root: the directory holding everything virtkit keeps on a host, and how it is opened.

Layout::

    ROOT/                 mode 0711
      virtkit.db          the state database (and its -wal and -shm files), mode 0600
      locks/<kind>/       per-object lock files (see locks.py)

Other packages add their own directories under ROOT. The root is created only when its parent
exists, as `mkdir` without `-p` would: a mistyped `--root` must fail and create nothing, not
silently grow a directory tree in the wrong place.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import StoreError
from virtkit.store.files import clean_stale_temps, temp_name
from virtkit.store.peek import DB_NAME
from virtkit.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

ROOT_MODE = 0o711
LOCKS_DIR = "locks"

_HINT = "pass another --root (or VIRTKIT_ROOT)"


@dataclass(frozen=True)
class StateRoot:
    """An opened state root: it exists, is a directory, and is writable."""

    path: Path

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    @property
    def locks_dir(self) -> Path:
        return self.path / LOCKS_DIR


def open_root(path: str | os.PathLike[str]) -> StateRoot:
    """Check (creating it if its parent exists) the state root at `path`.

    Raises StoreError saying why when the root cannot be used: its parent is missing, it is not
    a directory, or it is not writable. Stale temporary files of interrupted writes are removed.
    """
    root = Path(os.path.abspath(path))
    if not root.exists():
        _create(root)
    elif not root.is_dir():
        raise StoreError(f"state root {root} is not a directory", hint=_HINT)
    try:
        # Trying is the only honest check: as root, access(2) says yes to /proc and friends,
        # and an existing locks/ directory would hide a read-only mount from mkdir.
        probe = root / temp_name("probe")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        probe.unlink()
        (root / LOCKS_DIR).mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"state root {root} is not writable: {exc.strerror or exc}",
            hint=f"remount it read-write, or {_HINT}",
        ) from exc
    clean_stale_temps(root)
    return StateRoot(root)


def open_store(root_path: str | os.PathLike[str]) -> SqliteStore:
    """Open the state store of the state root at `root_path` (see `open_root`)."""
    root = open_root(root_path)
    return SqliteStore(root.db_path, root.locks_dir)


def _create(root: Path) -> None:
    parent = root.parent
    if not parent.is_dir():
        reason = "does not exist" if not parent.exists() else "is not a directory"
        raise StoreError(
            f"state root {root} cannot be created: {parent} {reason}",
            hint=f"create {parent} first, or {_HINT}",
        )
    try:
        root.mkdir(mode=ROOT_MODE)
        os.chmod(root, ROOT_MODE)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        if not root.is_dir():  # another process won the race and made something else
            raise StoreError(f"state root {root} is not a directory", hint=_HINT) from None
    except OSError as exc:
        raise StoreError(
            f"state root {root} cannot be created: {exc.strerror or exc}",
            hint=f"check {parent} is writable, or {_HINT}",
        ) from exc
    log.info("created state root %s", root)
