"""Fixtures of the ops unit tests: a state root, its real SQLite store, the FakeDriver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.drivers.fake import FakeDriver
from virtkit.store import SqliteStore, open_store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def store(root: Path) -> Iterator[SqliteStore]:
    opened = open_store(root)
    yield opened
    opened.close()


@pytest.fixture
def fake() -> FakeDriver:
    return FakeDriver()
