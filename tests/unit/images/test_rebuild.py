"""Rebuilding an image moves its alias and deletes the old image unless something still needs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.images.staged import DISK, StagedImage
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord
from virtkit.ops.images import rebuild
from virtkit.store import SqliteStore, open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = open_store(tmp_path / "root")
    yield opened
    opened.close()


def maker(content: bytes):  # type: ignore[no-untyped-def]
    def make(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(content)
        return StagedImage("tiny", ["vm"], "x86_64", "tiny", "test", files={DISK: "disk.qcow2"})

    return make


def test_unused_old_image_is_deleted(tmp_path: Path, store: SqliteStore) -> None:
    root = tmp_path / "root"
    first = rebuild(root, store, maker(b"one"), alias="tiny")
    second = rebuild(root, store, maker(b"two"), alias="tiny")
    assert [r.fingerprint for r in store.list(ImageRecord)] == [second.fingerprint]
    assert not (root / "images" / first.fingerprint).exists()


def test_old_image_kept_while_used_or_named(tmp_path: Path, store: SqliteStore) -> None:
    root = tmp_path / "root"
    first = rebuild(root, store, maker(b"one"), alias="tiny")
    store.create(InstanceRecord(name="web1", kind=InstanceKind.VM, image=first.fingerprint))
    second = rebuild(root, store, maker(b"two"), alias="tiny")
    assert {r.fingerprint for r in store.list(ImageRecord)} == {first.fingerprint, second.fingerprint}
    assert store.get(ImageRecord, first.fingerprint).aliases == []
    third = rebuild(root, store, maker(b"three"), alias="tiny")
    assert store.find(ImageRecord, second.fingerprint) is None
    assert store.find(ImageRecord, first.fingerprint) is not None
    assert store.get(ImageRecord, third.fingerprint).aliases == ["tiny"]
