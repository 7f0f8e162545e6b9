"""The storage verbs over a real store and real directories (filesystem volumes: no qemu-img here;
block volumes are in tests/integration/storage): the default pool, pools made and refused, volumes
refused while attached, and every failure leaving neither record nor directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError, StoreError
from virtkit.model import GiB, MiB, PoolRecord, TiB, VolumeRecord, VolumeType
from virtkit.ops.storage import DEFAULT_POOL, Storage, volume_size, volume_type
from virtkit.storage import pools, volumes
from virtkit.store import SqliteStore


@pytest.fixture
def storage(root: Path, store: SqliteStore) -> Storage:
    return Storage(root, store)


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if "locks" not in p.parts)


def test_sizes_and_types() -> None:
    assert volume_size("10GiB") == 10 * GiB and volume_size(MiB) == MiB
    for bad, words in [("0", "at least 1MiB"), ("-1G", "negative"), ("1K", "at least"),
                       ("65TiB", "at most 64TiB"), ("1EiB", "at most"), ("lots", "expected"),
                       ("0.5B", "whole number"), ("", "expected")]:  # fmt: skip
        with pytest.raises(SpecError, match=words):
            volume_size(bad)
    assert volume_size(64 * TiB) == 64 * TiB
    assert volume_type("filesystem") is VolumeType.FILESYSTEM
    with pytest.raises(SpecError, match="invalid volume type"):
        volume_type("raw")
    assert volumes.round_size(1000) == 1024 and volumes.round_size(1024) == 1024


def test_the_default_pool_is_made_once_under_the_root(
    storage: Storage, root: Path, store: SqliteStore
) -> None:
    first = storage.ensure_default()
    assert first.path == str(root / "pools" / "default") and first.owned
    assert pools.read_marker(first.path) == {"pool": "default", "root": str(root)}
    assert Storage(root, store).ensure_default() == first
    assert [v.record.name for v in storage.pool_views()] == ["default"]
    with pytest.raises(StateError, match="default pool cannot be deleted"):
        storage.delete_pool(DEFAULT_POOL)
    with pytest.raises(ConflictError, match="already exists"):
        storage.create_pool("default", path=str(root.parent / "x"))


def test_a_lost_default_record_takes_its_directory_back(
    root: Path, store: SqliteStore, storage: Storage
) -> None:
    storage.ensure_default()
    store.delete(PoolRecord, "default")
    assert storage.ensure_default().path == str(root / "pools" / "default")


def test_pools_made_and_deleted(storage: Storage, root: Path, tmp_path: Path) -> None:
    made = storage.create_pool("fast")  # ROOT/pools/fast
    assert made.path == str(root / "pools" / "fast") and made.owned
    given = tmp_path / "given"
    given.mkdir()
    mine = storage.create_pool("given", path=str(given) + "/")
    assert mine.path == str(given) and not mine.owned
    assert sorted(os.listdir(given)) == [".virtkit-pool", "block", "filesystem"]
    view = storage.pool_view("given")
    assert view.healthy and view.capacity is not None and view.capacity.total > view.capacity.free > 0

    assert storage.delete_pool("given") == [f"{given} was there before the pool: kept"]
    assert given.is_dir() and not os.listdir(given)  # the admin's directory, as it was
    assert storage.delete_pool("fast") == []
    assert not (root / "pools" / "fast").exists()
    with pytest.raises(NotFoundError, match="pool 'fast' not found"):
        storage.delete_pool("fast")


def test_a_pool_refused_leaves_nothing(storage: Storage, root: Path, tmp_path: Path) -> None:
    storage.ensure_default()
    before = tree(tmp_path)
    for name, path, error, words in [
        ("Bad", None, SpecError, "invalid pool name"),
        ("p", "rel/dir", SpecError, "absolute"),
        ("p", str(root / "instances"), SpecError, "own directories"),
        ("p", str(root / "pools" / "default" / "x"), SpecError, "inside pool 'default'"),
        ("p", "/etc", SpecError, "not empty"),
    ]:
        with pytest.raises(error, match=words):
            storage.create_pool(name, path=path)
    with pytest.raises(SpecError, match="unknown pool driver"):
        storage.create_pool("p", driver="lvm")
    assert tree(tmp_path) == before
    assert [r.name for r in storage.store.list(PoolRecord)] == ["default"]


def test_a_failed_record_undoes_the_pool_directory(
    storage: Storage, store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.ensure_default()
    given = tmp_path / "given"
    given.mkdir()

    def refuse(record: object) -> object:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "create", refuse)
    for path in (str(given), str(tmp_path / "new")):
        with pytest.raises(StoreError, match="disk full"):
            storage.create_pool("p", path=path)
    assert given.is_dir() and not os.listdir(given)
    assert not (tmp_path / "new").exists()


def test_filesystem_volumes(storage: Storage) -> None:
    made = storage.create_volume("default", "data", size="5GiB", type="filesystem")
    assert (made.type, made.format, made.size) == (VolumeType.FILESYSTEM, "dir", 5 * GiB)
    path = storage.path_of(made)
    assert path.is_dir() and path == Path(storage.pool("default").path, "filesystem", "data")
    (path / "f").write_bytes(b"x" * 10000)
    assert (storage.volume_view("default", "data").usage or 0) >= 10000

    assert storage.resize_volume("default", "data", "6GiB").size == 6 * GiB
    for force in (False, True):
        with pytest.raises(SpecError, match="cannot shrink"):
            storage.resize_volume("default", "data", "1GiB", force=force)
    with pytest.raises(SpecError, match="block volumes only"):
        storage.create_volume("default", "lim", type="filesystem", limits={"limits.iops": "5"})
    with pytest.raises(SpecError, match="block volumes only"):
        storage.set_limits("default", "data", {"limits.iops": "5"})
    with pytest.raises(ConflictError, match="already exists in pool 'default'"):
        storage.create_volume("default", "data", type="filesystem")
    with pytest.raises(ConflictError, match="pool 'default' is in use"):
        storage.store.delete(PoolRecord, "default")  # the store's own guard, below ours

    storage.delete_volume("default", "data")
    assert not path.exists() and not os.listdir(path.parent)
    assert storage.volume_records() == []


def test_attached_volumes_are_kept(storage: Storage) -> None:
    storage.create_pool("fast")
    storage.create_volume("fast", "data", type="filesystem")
    assert storage.claim("fast", "data", "web1").attached_to == "web1"
    for verb in (lambda: storage.delete_volume("fast", "data"),
                 lambda: storage.resize_volume("fast", "data", "20G"),
                 lambda: storage.claim("fast", "data", "web2")):  # fmt: skip
        with pytest.raises(StateError, match="attached to web1"):
            verb()
    with pytest.raises(StateError, match="holds 1 volume"):
        storage.delete_pool("fast")
    with pytest.raises(StateError, match="not attached to web2"):
        storage.release("fast", "data", "web2")
    assert storage.release("fast", "data", "web1").attached_to is None
    storage.delete_volume("fast", "data")
    storage.delete_pool("fast")


def test_an_unmounted_pool_is_not_written(storage: Storage) -> None:
    record = storage.create_pool("fast")
    storage.create_volume("fast", "keep", type="filesystem")
    os.unlink(os.path.join(record.path, pools.MARKER))  # as if its filesystem were not mounted
    with pytest.raises(StateError, match="has no pool marker"):
        storage.create_volume("fast", "data", type="filesystem")
    with pytest.raises(StateError, match="mounted"):
        storage.delete_volume("fast", "keep")
    assert not storage.pool_view("fast").healthy
    assert os.listdir(os.path.join(record.path, "filesystem")) == ["keep"]


def test_a_symlinked_type_directory_is_refused(storage: Storage, tmp_path: Path) -> None:
    record = storage.create_pool("fast")
    os.rmdir(os.path.join(record.path, "filesystem"))
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", os.path.join(record.path, "filesystem"))
    with pytest.raises(StateError, match="not a plain directory"):
        storage.create_volume("fast", "data", type="filesystem")
    assert not os.listdir(tmp_path / "elsewhere")


def test_a_failed_volume_record_undoes_the_directory(
    storage: Storage, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = storage.ensure_default()
    real = store.create

    def refuse(record: object) -> object:
        if isinstance(record, VolumeRecord):
            raise StoreError("disk full")
        return real(record)  # type: ignore[type-var]

    monkeypatch.setattr(store, "create", refuse)
    with pytest.raises(StoreError, match="disk full"):
        storage.create_volume("default", "data", type="filesystem")
    assert os.listdir(os.path.join(pool.path, "filesystem")) == []


def test_a_failed_delete_puts_the_volume_back(
    storage: Storage, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = storage.create_volume("default", "data", type="filesystem")
    (storage.path_of(made) / "f").write_text("kept")

    def refuse(*key: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "delete", refuse)
    with pytest.raises(StoreError):
        storage.delete_volume("default", "data")
    assert (storage.path_of(made) / "f").read_text() == "kept"


def test_an_orphan_is_never_overwritten(storage: Storage) -> None:
    pool = storage.ensure_default()
    orphan = Path(pool.path, "filesystem", "data")
    orphan.mkdir()
    (orphan / "precious").write_text("x")
    with pytest.raises(ConflictError, match="virtkit has no volume for it"):
        storage.create_volume("default", "data", type="filesystem")
    assert (orphan / "precious").read_text() == "x"


def test_usage_counts_each_inode_once_and_follows_no_symlink(tmp_path: Path) -> None:
    top = tmp_path / "vol"
    (top / "d").mkdir(parents=True)
    (top / "d" / "big").write_bytes(os.urandom(64 * 1024))
    os.link(top / "d" / "big", top / "again")
    (top / "out").symlink_to("/usr")
    used = volumes.usage(top) or 0
    assert 64 * 1024 <= used < 3 * 64 * 1024
    assert volumes.usage(tmp_path / "missing") is None


def test_a_pool_delete_keeps_what_is_not_its_own(storage: Storage, tmp_path: Path) -> None:
    record = storage.create_pool("fast", path=str(tmp_path / "fast"))
    Path(record.path, "block", "theirs.img").write_text("x")  # put there behind virtkit's back
    kept = storage.delete_pool("fast")
    assert kept == [
        f"{record.path}/block holds files virtkit did not make: kept",
        f"{record.path} is not empty: kept",
    ]
    assert Path(record.path, "block", "theirs.img").read_text() == "x"
    other = storage.create_pool("other", path=str(tmp_path / "other"))
    Path(other.path, pools.MARKER).write_text('{"pool": "someone"}')
    assert pools.remove(other.path, owned=True, pool="other") == [
        f"{other.path} is marked as pool 'someone' now: left as it is"
    ]
    assert sorted(os.listdir(other.path)) == [pools.MARKER, "block", "filesystem"]
