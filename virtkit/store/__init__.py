"""virtkit's state: the `Store` protocol, its SQLite implementation, the state root, per-object
locks and atomic file writes.

Open the store of a state root with `open_store(root)`; hold an object's lock with
`store.lock("instance", name)`; group writes with `store.transaction()`.
"""

from virtkit.store.base import DEFAULT_LOCK_TIMEOUT, Store, describe
from virtkit.store.files import atomic_write, clean_stale_temps, fsync_dir
from virtkit.store.root import DB_NAME, StateRoot, open_root, open_store
from virtkit.store.schema import known_version
from virtkit.store.sqlite import BUSY_TIMEOUT, SqliteStore

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
