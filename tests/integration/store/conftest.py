"""Fixtures for the store's integration tests: worker processes that are always reaped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from store_procs import Worker


@pytest.fixture
def spawn() -> Iterator[Callable[..., Worker]]:
    """Start store_worker.py processes; every one still running at the end is killed and reaped."""
    workers: list[Worker] = []

    def start(*args: str | Path) -> Worker:
        worker = Worker(*(str(a) for a in args))
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"
