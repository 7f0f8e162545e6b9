"""The image store with a real SQLite store in a temporary root: commit, resolve, aliases, delete."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from virtkit.errors import ConflictError, NotFoundError, SpecError
from virtkit.images.export import METADATA, export_image
from virtkit.images.staged import DISK, ROOTFS, StagedImage
from virtkit.images.store import ImageStore
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord
from virtkit.store import SqliteStore, open_store


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    opened = open_store(tmp_path / "root")
    yield opened  # type: ignore[misc]
    opened.close()


@pytest.fixture
def images(tmp_path: Path, store: SqliteStore) -> ImageStore:
    return ImageStore(tmp_path / "root", store)


def stage(images: ImageStore, content: bytes, name: str = "tiny") -> tuple[ImageRecord, Path]:
    with images.staging() as staging:
        (staging / "disk.qcow2").write_bytes(content)
        (staging / "rootfs" / "etc").mkdir(parents=True)
        (staging / "rootfs" / "etc" / "hostname").write_text(name)
        (staging / "rootfs" / "bin").mkdir()
        (staging / "rootfs" / "bin" / "sh").symlink_to("/bin/busybox")
        staged = StagedImage(
            name=name, kinds=["vm", "container"], arch="x86_64", format="tiny", source="test",
            files={DISK: "disk.qcow2", ROOTFS: "rootfs"}, virtual_size=len(content),
        )
        record = images.commit(staged, staging)
    return record, staging


def test_commit_moves_files_and_records(images: ImageStore, store: SqliteStore) -> None:
    record, staging = stage(images, b"disk one")
    assert not staging.exists()
    assert record.aliases == ["tiny"]
    assert images.file(record, DISK).read_bytes() == b"disk one"
    assert (images.file(record, ROOTFS) / "bin" / "sh").is_symlink()
    assert record.kinds == [InstanceKind.VM, InstanceKind.CONTAINER]
    assert store.get(ImageRecord, record.fingerprint) == record
    assert images.resolve("tiny") == record
    assert images.resolve(record.fingerprint[:8]) == record


def test_same_content_same_fingerprint_rebuild_moves_alias(images: ImageStore) -> None:
    first, _ = stage(images, b"disk one")
    again, _ = stage(images, b"disk one")
    assert again.fingerprint == first.fingerprint
    assert len(images.list()) == 1
    rebuilt, _ = stage(images, b"disk two")
    assert rebuilt.fingerprint != first.fingerprint
    assert images.resolve("tiny").fingerprint == rebuilt.fingerprint
    assert images.resolve(first.fingerprint).aliases == []


def test_failed_build_leaves_nothing(images: ImageStore, store: SqliteStore) -> None:
    with pytest.raises(RuntimeError), images.staging() as staging:
        (staging / "disk.qcow2").write_bytes(b"half")
        raise RuntimeError("builder failed")
    assert not staging.exists()
    assert store.list(ImageRecord) == []
    assert not images.dir.exists()


def test_failed_record_undoes_the_move(images: ImageStore, store: SqliteStore) -> None:
    with images.staging() as staging:
        (staging / "disk.qcow2").write_bytes(b"x")
        staged = StagedImage("tiny", ["vm"], "x86_64", "qcow2", "t", files={DISK: "disk.qcow2"})
        with pytest.raises(SpecError):
            images.commit(staged, staging, alias="Not_Valid")
        staged.kinds = ["no-such-kind"]
        with pytest.raises(ValueError):
            images.commit(staged, staging)
        assert staging.exists()
    assert store.list(ImageRecord) == []
    assert not images.dir.exists()


def test_resolve_errors(images: ImageStore) -> None:
    with pytest.raises(NotFoundError, match="image 'nope' not found"):
        images.resolve("nope")
    with pytest.raises(NotFoundError):
        images.resolve("../../etc")


def test_a_file_named_as_an_image_is_told_to_be_imported(images: ImageStore, tmp_path: Path) -> None:
    iso = tmp_path / "debian.iso"
    iso.write_bytes(b"x")
    with pytest.raises(NotFoundError, match="not found") as caught:
        images.resolve(str(iso))
    assert caught.value.hint == f"a file is not an image: import it first (virtkit image import {iso})"
    with pytest.raises(NotFoundError) as caught:
        images.resolve("nope")
    assert caught.value.hint == "`virtkit image list` shows the images"


def test_aliases(images: ImageStore) -> None:
    one, _ = stage(images, b"one", name="one")
    two, _ = stage(images, b"two", name="two")
    assert images.alias_add("one", "web").aliases == ["one", "web"]
    with pytest.raises(ConflictError, match="alias 'web' already names"):
        images.alias_add("two", "web")
    with pytest.raises(SpecError):
        images.alias_add("two", "Bad Alias")
    images.alias_remove("web")
    assert images.resolve("one").aliases == ["one"]
    with pytest.raises(NotFoundError):
        images.alias_remove("web")
    assert images.resolve(two.fingerprint).aliases == ["two"]
    assert one.fingerprint != two.fingerprint


def test_delete_refused_while_used(images: ImageStore, store: SqliteStore) -> None:
    record, _ = stage(images, b"used")
    store.create(InstanceRecord(name="web1", kind=InstanceKind.VM, image=record.fingerprint))
    with pytest.raises(ConflictError, match="used by instance web1"):
        images.delete("tiny")
    assert images.file(record, DISK).exists()
    assert store.get(ImageRecord, record.fingerprint)
    store.delete(InstanceRecord, "web1")
    images.delete("tiny")
    assert not images.path(record).exists()
    assert store.list(ImageRecord) == []
    assert list((images.dir / ".staging").iterdir()) == []


def test_export(images: ImageStore, tmp_path: Path) -> None:
    record, _ = stage(images, b"exported disk")
    dest = export_image(images, record, tmp_path / "tiny.tar")
    with tarfile.open(dest) as archive:
        names = archive.getnames()
        assert names[0] == METADATA
        assert "disk.qcow2" in names and "rootfs/bin/sh" in names
    with pytest.raises(ConflictError, match="already exists"):
        export_image(images, record, dest)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
