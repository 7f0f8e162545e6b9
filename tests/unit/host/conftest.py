"""Fixtures for virtkit.host tests; the tree builder itself lives in hosttree.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hosttree import MakeTree, build_tree


@pytest.fixture
def make_tree(tmp_path: Path) -> MakeTree:
    counter = iter(range(1000))

    def make(**kwargs: Any) -> Path:
        return build_tree(tmp_path / f"host{next(counter)}", **kwargs)

    return make
