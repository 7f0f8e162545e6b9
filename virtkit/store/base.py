"""The `Store` contract: records in, records out, by key; transactions; per-object locks.

Every backend (SQLite on one host, etcd for a cluster) implements this protocol, so it speaks only
of records, keys, transactions and locks — never of SQL. The helpers here turn a record class and
a key into the words users read in error messages ("snapshot 'daily' of instance 'web1'").
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

from virtkit.model import Record

R = TypeVar("R", bound=Record)

DEFAULT_LOCK_TIMEOUT = 30.0

# How a qualifying key field reads before its value: "volume 'disk1' in pool 'default'".
_PREPOSITIONS = {"pool": "in"}


def noun(table: str) -> str:
    """The user-facing singular of a table name: "instances" -> "instance"."""
    return table[:-1] if table.endswith("s") else table


def describe(cls: type[Record], key: Sequence[str]) -> str:
    """Name one record the way a user would: "instance 'web1'", "snapshot 'daily' of instance 'web1'".

    The last key field is the record's own name; the fields before it say what it belongs to.
    """
    text = f"{noun(cls.TABLE)} {key[-1]!r}" if key else noun(cls.TABLE)
    for field, value in reversed(list(zip(cls.KEY[:-1], key[:-1], strict=False))):
        text += f" {_PREPOSITIONS.get(field, 'of')} {field} {value!r}"
    return text


def check_key(cls: type[Record], key: Sequence[str]) -> tuple[str, ...]:
    """Refuse a key with the wrong number of parts (a programming error, not a user one)."""
    if len(key) != len(cls.KEY):
        raise TypeError(
            f"{cls.__name__} is keyed by {', '.join(cls.KEY)}: expected {len(cls.KEY)} key value(s), "
            f"got {len(key)}"
        )
    return tuple(key)


def check_filters(cls: type[Record], equals: dict[str, str]) -> None:
    """Refuse a list filter on a field that is not part of the key: backends index keys only."""
    unknown = sorted(set(equals) - set(cls.KEY))
    if unknown:
        raise TypeError(
            f"{cls.__name__} can be listed by its key fields ({', '.join(cls.KEY)}), "
            f"not by {', '.join(unknown)}"
        )


class Store(Protocol):
    """Where virtkit keeps its records.

    Reads and writes are by record class and key. A write outside `transaction()` is atomic on its
    own; inside one, it commits or rolls back with everything else in that transaction.
    """

    def get(self, cls: type[R], *key: str) -> R:
        """The record with this key; NotFoundError ("instance 'web1' not found") when absent."""
        ...

    def find(self, cls: type[R], *key: str) -> R | None:
        """The record with this key, or None."""
        ...

    def list(self, cls: type[R], **equals: str) -> builtins.list[R]:
        """Every record of this class whose key fields equal `equals`, ordered by key.

        `list(SnapshotRecord, instance="web1")` lists the snapshots of web1.
        """
        ...

    def create(self, rec: R) -> R:
        """Store a new record; ConflictError if its key exists, NotFoundError if what it belongs
        to (its pool, its instance) does not."""
        ...

    def put(self, rec: R) -> R:
        """Create or replace a record; sets `updated_at`, keeps the stored `created_at`.
        Returns the record as stored."""
        ...

    def delete(self, cls: type[Record], *key: str) -> None:
        """Remove a record and what depends on it (an instance's snapshots). NotFoundError if
        absent; ConflictError if something still needs it (a pool that holds volumes)."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Group writes: all of them happen or none does. On exception everything since the
        matching enter is undone and the exception propagates. Nested use is allowed."""
        ...

    def lock(
        self, kind: str, name: str, timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> AbstractContextManager[None]:
        """Hold the exclusive lock of one object (kind "instance", name "web1") across processes.

        Waits at most `timeout` seconds, then raises BusyError. Re-entering a lock this thread
        already holds succeeds at once. A lock dies with the process holding it.
        """
        ...

    def close(self) -> None:
        """Release the backend's resources; the store is unusable afterwards."""
        ...
