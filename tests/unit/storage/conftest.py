"""Fixtures of the storage unit tests: a state root with its store, and a Lifecycle over it with the
`tiny` image and whatever `fake` driver the test module defines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.drivers.fake import FakeDriver
from virtkit.images.staged import DISK, ROOTFS, StagedImage
from virtkit.ops.images import add_staged
from virtkit.ops.lifecycle import Lifecycle
from virtkit.store import SqliteStore, open_store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def store(root: Path) -> Iterator[SqliteStore]:
    with open_store(root) as opened:
        yield opened


@pytest.fixture
def life(root: Path, store: SqliteStore, fake: FakeDriver) -> Lifecycle:
    def make(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(b"disk")
        (staging / "rootfs").mkdir()
        return StagedImage("tiny", ["vm", "container"], "x86_64", "tiny", "t",
                           files={DISK: "disk.qcow2", ROOTFS: "rootfs"})  # fmt: skip

    add_staged(root, store, make, alias="tiny")
    return Lifecycle(root, store, drivers=lambda kind: fake)
