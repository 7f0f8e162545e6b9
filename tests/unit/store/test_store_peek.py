"""store.peek: the lean read-only look-ups find what the store holds, and say "cannot tell" (None)
rather than guess when the database is missing, damaged or ambiguous."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from virtkit.model import ImageRecord, InstanceKind, InstanceRecord
from virtkit.store import SqliteStore, peek


def _image(fingerprint: str, *aliases: str) -> ImageRecord:
    return ImageRecord(fingerprint=fingerprint, name="tiny", format="tiny", aliases=list(aliases),
                       kinds=[InstanceKind.CONTAINER], files={"rootfs": "rootfs"})  # fmt: skip


def test_an_image_is_found_by_alias_or_unique_fingerprint_prefix(root: Path, store: SqliteStore) -> None:
    store.create(_image("ab" * 32, "tiny", "busybox"))
    store.create(_image("ac" * 32, "other"))
    assert peek.image(root, "busybox")["fingerprint"] == "ab" * 32  # type: ignore[index]
    assert peek.image(root, "abab")["files"] == {"rootfs": "rootfs"}  # type: ignore[index]
    assert peek.image(root, "a") is None  # too short to be a prefix
    assert peek.image(root, "aaaa") is None
    assert peek.image(root, "nope") is None
    assert peek.image(root, "' OR 1=1 --") is None


def test_an_ambiguous_prefix_is_not_guessed(root: Path, store: SqliteStore) -> None:
    store.create(_image("ab" * 32))
    store.create(_image("abc" + "0" * 61))
    assert peek.image(root, "abab") is not None
    assert peek.image(root, "ab00") is None
    assert peek.image(root, "abcd") is None
    assert peek.image(root, "abc0") is not None


def test_instances(root: Path, store: SqliteStore) -> None:
    store.create(InstanceRecord(name="c1", kind=InstanceKind.CONTAINER))
    assert peek.instance_exists(root, "c1") is True
    assert peek.instance_exists(root, "c2") is False


def test_no_database_finds_nothing(tmp_path: Path) -> None:
    assert peek.image(tmp_path, "tiny") is None
    assert peek.instance_exists(tmp_path, "c1") is False


def test_a_damaged_database_cannot_tell(tmp_path: Path) -> None:
    (tmp_path / "virtkit.db").write_bytes(b"this is not sqlite" * 100)
    assert peek.image(tmp_path, "tiny") is None
    assert peek.instance_exists(tmp_path, "c1") is None


def test_a_damaged_row_is_not_returned(root: Path, store: SqliteStore, raw: sqlite3.Connection) -> None:
    store.create(_image("ab" * 32, "tiny"))
    raw.execute("UPDATE images SET data = '[1, 2' WHERE 1")
    assert peek.image(root, "abab") is None
