"""How failures met by the SQLite store become virtkit errors a user can act on.

An sqlite3 error names a constraint or an SQLITE_* code; a user needs to hear "pool 'default' is in
use by 2 volumes (disk1, disk2)". The foreign keys are read from the database itself
(pragma_foreign_key_list), so the schema stays the one place that says what depends on what.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pydantic import ValidationError

from virtkit.errors import BusyError, ConflictError, NotFoundError, StoreError, VirtkitError
from virtkit.model import Record
from virtkit.store.base import describe, noun
from virtkit.store.schema import quote


def sqlite_error(exc: sqlite3.Error, path: Path, doing: str, busy_timeout: float) -> VirtkitError:
    """The virtkit error for an sqlite3 error met while `doing` something to the database at `path`."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = f"{doing}: {exc}"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return BusyError(
            f"the state database {path} is busy: another virtkit process kept it locked for more "
            f"than {busy_timeout:.0f}s",
            hint=f"retry; if this persists, look for a stuck process with: fuser -v {path}",
        )
    if name.startswith("SQLITE_READONLY"):
        return StoreError(
            f"the state database {path} is read-only ({text})",
            hint="the state root must be on a writable file system",
        )
    if name == "SQLITE_FULL":
        return StoreError(f"the disk holding {path} is full ({text})", hint="free some space")
    if name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB":
        return StoreError(
            f"{path} is damaged or is not a virtkit database ({text})",
            hint="restore it from a backup, or move it away to start afresh",
        )
    if name.startswith("SQLITE_CANTOPEN"):
        return StoreError(
            f"cannot open the state database {path} ({text})",
            hint="check that the state root exists and is writable",
        )
    return StoreError(f"state database {path}: {text}", hint="see the logs with --debug")


def insert_refused(
    conn: sqlite3.Connection, cls: type[Record], key: tuple[str, ...], exc: sqlite3.IntegrityError, path: Path
) -> VirtkitError:
    """Why an insert was refused: the key exists, or a record it belongs to does not."""
    if exc.sqlite_errorname in ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"):
        return ConflictError(
            f"{describe(cls, key)} already exists", hint="choose another name, or delete it first"
        )
    if exc.sqlite_errorname == "SQLITE_CONSTRAINT_FOREIGNKEY":
        values = dict(zip(cls.KEY, key, strict=True))
        for row in conn.execute("SELECT * FROM pragma_foreign_key_list(?)", [cls.TABLE]).fetchall():
            parent, column, parent_column = row[2], row[3], row[4]
            value = values.get(column)
            found = conn.execute(
                f"SELECT 1 FROM {quote(parent)} WHERE {quote(parent_column)} = ?", [value]
            ).fetchall()
            if not found:
                return NotFoundError(
                    f"cannot create {describe(cls, key)}: {noun(parent)} {value!r} not found",
                    hint=f"create {noun(parent)} {value!r} first",
                )
    return StoreError(f"state database {path}: writing {describe(cls, key)}: {exc}")


def delete_refused(conn: sqlite3.Connection, cls: type[Record], key: tuple[str, ...]) -> VirtkitError:
    """Why a delete was refused: records of another table still point at this one."""
    values = dict(zip(cls.KEY, key, strict=True))
    users: list[str] = []
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    for (child,) in tables:
        for row in conn.execute("SELECT * FROM pragma_foreign_key_list(?)", [child]).fetchall():
            column, parent_column, on_delete = row[3], row[4], row[6]
            if row[2] != cls.TABLE or on_delete == "CASCADE" or parent_column not in values:
                continue
            names = _dependents(conn, child, column, values[parent_column])
            if names:
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                kind = noun(child) if len(names) == 1 else child
                users.append(f"{len(names)} {kind} ({shown})")
    return ConflictError(
        f"{describe(cls, key)} is in use by {' and '.join(users) or 'other records'}",
        hint="delete or move those first",
    )


def _dependents(conn: sqlite3.Connection, table: str, column: str, value: str) -> list[str]:
    # A dependent is named by the last column of its own key, as users name it.
    pk = conn.execute("SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", [table]).fetchall()
    label = quote(pk[-1][0])
    rows = conn.execute(
        f"SELECT {label} FROM {quote(table)} WHERE {quote(column)} = ? ORDER BY {label}", [value]
    ).fetchall()
    return [str(name) for (name,) in rows]


def validation_summary(exc: Exception) -> str:
    """The first problem pydantic found, in one line: "memory: Input should be greater than 0"."""
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"]) or "data"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        return f"{where}: {first['msg']}{more}"
    return str(exc)
