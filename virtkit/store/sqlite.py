"""The default store: one SQLite database per state root, safe across concurrent virtkit processes.

Durability: WAL journal with synchronous=FULL, so a committed transaction survives a killed process
and a power loss. Concurrency: every write transaction starts with BEGIN IMMEDIATE, taking the write
lock up front (a deferred transaction upgrading from read to write can fail with "database is
locked" instead of waiting), and busy_timeout makes other processes wait for it. One connection per
store; a store may be shared by threads, which then take turns.

Each table holds a record's key columns and its JSON. What comes out is validated by the record's
model, so a damaged row is reported, naming it, instead of surfacing as a pydantic traceback.
No sqlite3 error leaves this module: each becomes a virtkit error (see translation.py).
"""

from __future__ import annotations

import builtins
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from virtkit.errors import BusyError, NotFoundError, SpecError, StoreError, VirtkitError
from virtkit.model import Record
from virtkit.store import locks, schema, translation
from virtkit.store.base import DEFAULT_LOCK_TIMEOUT, R, check_filters, check_key, describe
from virtkit.store.schema import quote

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 10.0


class SqliteStore:
    """A `Store` in the SQLite database at `db_path`, with its object locks under `locks_dir`."""

    def __init__(self, db_path: str | os.PathLike[str], locks_dir: str | os.PathLike[str]) -> None:
        self.path = Path(db_path)
        self.locks_dir = Path(locks_dir)
        self._mutex = threading.RLock()
        self._depth = 0
        self._verified: set[type[Record]] = set()
        self._conn: sqlite3.Connection | None = self._connect()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reading -------------------------------------------------------------------------------

    def get(self, cls: type[R], *key: str) -> R:
        rec = self.find(cls, *key)
        if rec is None:
            raise NotFoundError(f"{describe(cls, key)} not found")
        return rec

    def find(self, cls: type[R], *key: str) -> R | None:
        key = check_key(cls, key)
        rows = self._query(
            f"SELECT data FROM {quote(self._table(cls))} WHERE {_where(cls.KEY)}", key, describe(cls, key)
        )
        return self._load(cls, key, rows[0][0]) if rows else None

    def list(self, cls: type[R], **equals: str) -> builtins.list[R]:
        check_filters(cls, equals)
        fields = [field for field in cls.KEY if field in equals]
        where = f"WHERE {_where(fields)}" if fields else ""
        columns = ", ".join(quote(c) for c in cls.KEY)
        rows = self._query(
            f"SELECT {columns}, data FROM {quote(self._table(cls))} {where} ORDER BY {columns}",
            [str(equals[field]) for field in fields],
            cls.TABLE,
        )
        return [self._load(cls, tuple(row[:-1]), row[-1]) for row in rows]

    # --- writing -------------------------------------------------------------------------------

    def create(self, rec: R) -> R:
        stored, data = self._checked(rec)
        self._insert(stored, data, upsert=False)
        return stored

    def put(self, rec: R) -> R:
        cls, key = type(rec), rec.key()
        with self.transaction():
            rows = self._query(
                f"SELECT created_at FROM {quote(self._table(cls))} WHERE {_where(cls.KEY)}",
                key,
                describe(cls, key),
            )
            update: dict[str, Any] = {"updated_at": time.time()}
            if rows:
                update["created_at"] = rows[0][0]
            stored, data = self._checked(rec.model_copy(update=update))
            self._insert(stored, data, upsert=True)
        return stored

    def delete(self, cls: type[Record], *key: str) -> None:
        key = check_key(cls, key)
        table = self._table(cls)
        with self.transaction(), self._translated(f"deleting {describe(cls, key)}"):
            try:
                cursor = self._connection().execute(
                    f"DELETE FROM {quote(table)} WHERE {_where(cls.KEY)}", key
                )
            except sqlite3.IntegrityError as exc:
                raise translation.delete_refused(self._connection(), cls, key) from exc
            if cursor.rowcount == 0:
                raise NotFoundError(f"{describe(cls, key)} not found")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._exclusive():
            conn = self._connection()
            depth = self._depth
            savepoint = f"virtkit_{depth}"
            with self._translated("starting a transaction"):
                conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth = depth
                self._undo(conn, depth, savepoint)
                raise
            self._depth = depth
            try:
                conn.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
            except sqlite3.Error as exc:
                self._undo(conn, depth, savepoint)
                raise self._error(exc, "committing a transaction") from exc

    def lock(
        self, kind: str, name: str, timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> AbstractContextManager[None]:
        return locks.hold(self.locks_dir, kind, name, timeout)

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- internals -----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            # Made here, not by sqlite, to set its mode: sqlite gives its -wal and -shm files the same.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(
                f"cannot create the state database {self.path}: {exc.strerror or exc}",
                hint="check that the state root is writable",
            ) from exc
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error(exc, "opening the state database") from exc
        try:
            with self._translated("opening the state database"):
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
                conn.execute("PRAGMA foreign_keys = ON")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
                if str(mode).lower() != "wal":
                    log.warning("%s: journal mode is %s, not wal", self.path, mode)
                conn.execute("PRAGMA synchronous = FULL")
                schema.migrate(conn, str(self.path))
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the state store {self.path} is closed")
        return self._conn

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This store's connection, to this thread alone; bounded like waiting for another process."""
        if not self._mutex.acquire(timeout=BUSY_TIMEOUT):
            raise BusyError(
                f"the state store {self.path} is busy: another thread kept it for more than "
                f"{BUSY_TIMEOUT:.0f}s",
                hint="retry",
            )
        try:
            yield
        finally:
            self._mutex.release()

    def _undo(self, conn: sqlite3.Connection, depth: int, savepoint: str) -> None:
        try:
            if not conn.in_transaction:  # an error such as a full disk has already rolled it back
                return
            if depth == 0:
                conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO {savepoint}")
                conn.execute(f"RELEASE {savepoint}")
        except sqlite3.Error as exc:  # the exception being handled matters more than this one
            log.error("%s: rolling back failed: %s", self.path, exc)

    def _query(self, sql: str, params: Sequence[str], what: str) -> builtins.list[Any]:
        with self._exclusive(), self._translated(f"reading {what}"):
            return self._connection().execute(sql, params).fetchall()

    def _insert(self, rec: Record, data: str, *, upsert: bool) -> None:
        cls, key = type(rec), rec.key()
        columns = [*cls.KEY, "data", "created_at", "updated_at"]
        sql = (
            f"INSERT INTO {quote(self._table(cls))} ({', '.join(quote(c) for c in columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        if upsert:  # never INSERT OR REPLACE: it deletes the row first, cascading to its snapshots
            sql += (
                f" ON CONFLICT ({', '.join(quote(c) for c in cls.KEY)}) DO UPDATE SET"
                " data = excluded.data, updated_at = excluded.updated_at"
            )
        with self.transaction(), self._translated(f"writing {describe(cls, key)}"):
            try:
                self._connection().execute(sql, [*key, data, rec.created_at, rec.updated_at])
            except sqlite3.IntegrityError as exc:
                raise translation.insert_refused(self._connection(), cls, key, exc, self.path) from exc

    def _table(self, cls: type[Record]) -> str:
        """The table of a record class, once checked against the database's schema: this is
        what makes it safe to put table and key names into SQL text."""
        if cls not in self._verified:
            rows = self._query("SELECT name, pk FROM pragma_table_info(?)", [cls.TABLE], "the schema")
            key = tuple(name for name, pk in sorted(rows, key=lambda row: row[1]) if pk)
            if key != cls.KEY:
                raise TypeError(
                    f"{cls.__name__} (table {cls.TABLE!r}, key {cls.KEY}) does not match the state "
                    f"database schema (key {key or 'none: no such table'})"
                )
            self._verified.add(cls)
        return cls.TABLE

    def _checked(self, rec: R) -> tuple[R, str]:
        """The record as it will be read back, and its JSON: what cannot be read back is refused."""
        try:
            data = rec.model_dump_json()
            return type(rec).model_validate_json(data), data
        except (ValidationError, ValueError) as exc:
            raise SpecError(
                f"invalid {describe(type(rec), rec.key())}: {translation.validation_summary(exc)}"
            ) from exc

    def _load(self, cls: type[R], key: tuple[str, ...], data: object) -> R:
        try:
            if not isinstance(data, str | bytes):
                raise TypeError(f"data is {type(data).__name__}, not JSON text")
            rec = cls.model_validate_json(data)
            problem = "" if rec.key() == key else f"its data is keyed {rec.key()}"
        except (ValidationError, ValueError, TypeError) as exc:
            problem = translation.validation_summary(exc)
        if problem:
            raise StoreError(
                f"the stored {describe(cls, key)} (table {cls.TABLE}) is damaged: {problem}",
                hint="restore the state root from a backup, or delete this record",
            )
        return rec

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc

    def _error(self, exc: sqlite3.Error, doing: str) -> VirtkitError:
        return translation.sqlite_error(exc, self.path, doing, BUSY_TIMEOUT)


def _where(columns: Sequence[str]) -> str:
    return " AND ".join(f"{quote(c)} = ?" for c in columns)
