"""Fixtures for the store's unit tests: a fresh state root and store per test, and sample records."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_samples import sample

from virtkit.model import InstanceRecord, PoolRecord
from virtkit.store import SqliteStore, open_store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def store(root: Path) -> Iterator[SqliteStore]:
    with open_store(root) as opened:
        yield opened


@pytest.fixture
def parents(store: SqliteStore) -> SqliteStore:
    """The store, holding the pool and the instance that volumes and snapshots belong to."""
    store.create(sample(PoolRecord))
    store.create(sample(InstanceRecord))
    return store


@pytest.fixture
def raw(root: Path, store: SqliteStore) -> Iterator[sqlite3.Connection]:
    """A second, plain connection to the store's database, to look under (or damage) it."""
    conn = sqlite3.connect(root / "virtkit.db", isolation_level=None)
    yield conn
    conn.close()
