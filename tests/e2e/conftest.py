"""The CLI as a user types it: the installed `virtkit` script run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.permissions import reachable

VIRTKIT = Path(sys.executable).parent / "virtkit"

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def state_root(tmp_path: Path) -> Path:
    """A fresh state root (not yet created: virtkit creates it on first use), reachable by QEMU's user."""
    return reachable(tmp_path / "root")


@pytest.fixture
def virtkit(state_root: Path) -> Cli:
    """Run `virtkit ARGS...` against the test's own state root; returns the finished process."""

    def run(
        *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "VIRTKIT_ROOT": str(state_root), **(env or {})}
        return subprocess.run(
            [str(VIRTKIT), *args], capture_output=True, text=True, timeout=timeout, env=full_env, check=False
        )

    return run
