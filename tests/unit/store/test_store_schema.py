"""The database schema: created from nothing, re-opened unchanged, migrated forward, never backward."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from store_samples import sample

from virtkit.errors import StoreError
from virtkit.model import InstanceRecord, Record
from virtkit.store import SqliteStore, known_version, open_store, schema

TABLES = {"instances", "images", "networks", "pools", "volumes", "snapshots", "operations", "tokens",
          "stacks", "volume_snapshots"}


def version_rows(db: Path) -> list[tuple[int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchall()


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def test_a_new_database_gets_the_whole_schema(store: SqliteStore, root: Path) -> None:
    db = root / "virtkit.db"
    assert version_rows(db) == [(known_version(),)]
    assert tables(db) == TABLES | {"schema_version"}
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file


def test_the_connection_is_set_for_durability_and_integrity(store: SqliteStore) -> None:
    conn = store._connection()  # the settings are per connection: only the store's own will do
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000


def test_reopening_changes_nothing(root: Path) -> None:
    with open_store(root) as store:
        store.create(sample(InstanceRecord))
    db = root / "virtkit.db"
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    for _ in range(2):
        with open_store(root) as store:
            assert store.get(InstanceRecord, "web1").name == "web1"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before
    assert version_rows(db) == [(known_version(),)]


def test_a_database_from_a_newer_virtkit_is_refused(root: Path) -> None:
    open_store(root).close()
    db = root / "virtkit.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError) as error:
        open_store(root)
    assert error.value.message == (
        f"database schema v99 is newer than this virtkit (knows v{known_version()}); upgrade virtkit"
    )
    assert version_rows(db) == [(99,)]


def test_missing_migrations_are_applied_forward(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_store(root) as store:
        store.create(sample(InstanceRecord))
    extra = ["CREATE TABLE extra (name TEXT PRIMARY KEY)", "INSERT INTO extra VALUES ('x')"]
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, extra])

    with open_store(root) as store:
        assert store.get(InstanceRecord, "web1").name == "web1"
    db = root / "virtkit.db"
    assert version_rows(db) == [(known_version(),)] == [(len(schema.MIGRATIONS),)]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM extra").fetchall() == [("x",)]


def test_a_failing_migration_leaves_the_database_as_it_was(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store(root).close()
    broken = ["CREATE TABLE extra (name TEXT)", "THIS IS NOT SQL"]
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, broken])

    with pytest.raises(StoreError, match="syntax error"):
        open_store(root)
    db = root / "virtkit.db"
    assert version_rows(db) == [(known_version() - 1,)]
    assert "extra" not in tables(db)


def test_a_fresh_database_fails_whole_too(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, ["NOT SQL"]])
    with pytest.raises(StoreError):
        open_store(root)
    assert tables(root / "virtkit.db") == set()


def test_a_file_that_is_not_a_database_is_refused(root: Path) -> None:
    root.mkdir()
    (root / "virtkit.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="is damaged or is not a virtkit database") as error:
        open_store(root)
    assert error.value.hint


def test_a_damaged_version_table_is_refused(root: Path) -> None:
    open_store(root).close()
    with sqlite3.connect(root / "virtkit.db") as conn:
        conn.execute("INSERT INTO schema_version VALUES (1)")
    with pytest.raises(StoreError, match="schema_version table is damaged"):
        open_store(root)


def test_a_record_class_the_schema_does_not_know_is_a_programming_error(store: SqliteStore) -> None:
    class Stray(Record):
        TABLE = "strays"
        KEY = ("name",)
        name: str

    with pytest.raises(TypeError, match="no such table"):
        store.list(Stray)
