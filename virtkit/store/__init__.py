"""virtkit's state: the `Store` protocol, its SQLite implementation, the state root, per-object
locks and atomic file writes.

Open the store of a state root with `open_store(root)`; hold an object's lock with
`store.lock("instance", name)`; group writes with `store.transaction()`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtkit.store.base import DEFAULT_LOCK_TIMEOUT, Store, describe
    from virtkit.store.files import atomic_write, clean_stale_temps, fsync_dir
    from virtkit.store.peek import DB_NAME
    from virtkit.store.root import StateRoot, open_root, open_store
    from virtkit.store.schema import known_version
    from virtkit.store.sqlite import BUSY_TIMEOUT, SqliteStore

# Imported on first use: `virtkit run` reads the store through store.peek, without pydantic.
_EXPORTS = {
    "DEFAULT_LOCK_TIMEOUT": "base", "Store": "base", "describe": "base",
    "DB_NAME": "peek", "StateRoot": "root", "open_root": "root", "open_store": "root",
    "known_version": "schema", "BUSY_TIMEOUT": "sqlite", "SqliteStore": "sqlite",
    "atomic_write": "files", "clean_stale_temps": "files", "fsync_dir": "files",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "BUSY_TIMEOUT",
    "DB_NAME",
    "DEFAULT_LOCK_TIMEOUT",
    "SqliteStore",
    "StateRoot",
    "Store",
    "atomic_write",
    "clean_stale_temps",
    "describe",
    "fsync_dir",
    "known_version",
    "open_root",
    "open_store",
]
