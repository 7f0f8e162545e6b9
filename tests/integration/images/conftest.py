"""Disk fixtures shared by the import tests: one raw source disk per module and its conversions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .diskbuild import convert, make_raw


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("disks")


@pytest.fixture(scope="module")
def raw_disk(work: Path) -> Path:
    return make_raw(work / "source.img")


@pytest.fixture(scope="module")
def made(work: Path, raw_disk: Path) -> Callable[[str], Path]:
    """The raw disk converted to a CONVERSIONS kind (each made once per module)."""
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = convert(raw_disk, kind, work)
        return cache[kind]

    return get
