"""The scripts in examples/ run as a user would run them, against a root with the tiny image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import seed_root

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="instances need root")


def test_library_tour(state_root: Path, tiny_template: Path) -> None:
    seed_root(tiny_template, state_root)
    done = subprocess.run([sys.executable, str(EXAMPLES / "library_tour.py"), "--root", str(state_root)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("container: Linux ") and lines[0].endswith("| running"), lines
    assert "restored note: before" in lines
    assert "clone's hostname: tour-c2" in lines
    assert any(line.startswith("vm: x86_64 | running") for line in lines), lines
    assert "gone: instance 'tour-vm1' not found" in lines
    assert lines[-1] == "instances left: []"
