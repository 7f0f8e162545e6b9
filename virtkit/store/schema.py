"""The SQLite schema of the state database and its forward migrations.

`MIGRATIONS[i]` takes a database from version i to version i + 1; the version lives in the one-row
table `schema_version`. A migration is a list of statements rather than one script because
sqlite3's executescript commits before running, and every migration must commit together with
its version bump or not at all. Migrations are append-only: once released, a migration is never
edited — a change is a new migration.

Every record table holds the record's key columns, its JSON (`data`, the source of truth) and its
timestamps. Foreign keys say what depends on what: an instance's snapshots go with it, and a
volume's; a pool holding volumes cannot be deleted.
"""

from __future__ import annotations

import logging
import sqlite3

from virtkit.errors import StoreError

log = logging.getLogger(__name__)

_V1 = [
    """CREATE TABLE instances (
        name TEXT NOT NULL PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    """CREATE TABLE images (
        fingerprint TEXT NOT NULL PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    """CREATE TABLE networks (
        name TEXT NOT NULL PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    """CREATE TABLE pools (
        name TEXT NOT NULL PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    """CREATE TABLE volumes (
        pool TEXT NOT NULL REFERENCES pools(name) ON DELETE RESTRICT,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (pool, name))""",
    """CREATE TABLE snapshots (
        instance TEXT NOT NULL REFERENCES instances(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (instance, name))""",
    """CREATE TABLE operations (
        id TEXT NOT NULL PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
]

# v2: API tokens (`virtkit token create`).
_V2 = [
    """CREATE TABLE tokens (
        name TEXT NOT NULL PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
]

# v3: stacks (`virtkit apply`).
_V3 = [
    """CREATE TABLE stacks (
        name TEXT NOT NULL PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
]

# v4: snapshots of pool volumes (`virtkit volume snapshot`), deleted with their volume.
_V4 = [
    """CREATE TABLE volume_snapshots (
        pool TEXT NOT NULL,
        volume TEXT NOT NULL,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (pool, volume, name),
        FOREIGN KEY (pool, volume) REFERENCES volumes(pool, name) ON DELETE CASCADE)""",
]

MIGRATIONS: list[list[str]] = [_V1, _V2, _V3, _V4]


def quote(identifier: str) -> str:
    """An SQL identifier (table or column name), quoted."""
    return '"' + identifier.replace('"', '""') + '"'


def known_version() -> int:
    """The schema version this virtkit writes."""
    return len(MIGRATIONS)


def read_version(conn: sqlite3.Connection) -> int:
    """The database's schema version; 0 for a new, empty database."""
    tables = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchall()
    if not tables:
        return 0
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise StoreError(
            f"the state database's schema_version table is damaged (holds {rows!r})",
            hint="restore the state root from a backup",
        )
    version: int = rows[0][0]
    return version


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the database at `path` (open on `conn`, in autocommit mode) to `known_version()`.

    All missing migrations run in one write transaction: a crash or an error leaves the database
    at its old version. Returns the version it now has.
    """
    if _check(read_version(conn), path) == known_version():
        return known_version()  # the usual case, decided without taking the write lock
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated meanwhile.
        version = _check(read_version(conn), path)
        if version == 0:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        for index in range(version, known_version()):
            log.info("migrating %s to schema v%d", path, index + 1)
            for statement in MIGRATIONS[index]:
                conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ?", (known_version(),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # some errors (disk full) have already rolled it back
            conn.execute("ROLLBACK")
        raise
    return known_version()


def _check(version: int, path: str) -> int:
    if version > known_version():
        raise StoreError(
            f"database schema v{version} is newer than this virtkit (knows v{known_version()}); "
            "upgrade virtkit",
            hint=f"{path} was written by a newer virtkit; install that version or newer",
        )
    return version
