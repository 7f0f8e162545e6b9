"""Records in and out of the SQLite store: CRUD for every kind, errors and their messages, filters."""

from __future__ import annotations

import sqlite3
import time

import pytest
from store_samples import ALL_RECORDS, FINGERPRINT, sample

from virtkit.errors import ConflictError, NotFoundError, SpecError, StoreError
from virtkit.model import (
    ImageRecord,
    InstanceRecord,
    InstanceState,
    OperationRecord,
    OperationStatus,
    PoolRecord,
    Record,
    SnapshotRecord,
    VolumeRecord,
)
from virtkit.store import SqliteStore

# A field of each record kind that a put can change, and the new value.
CHANGES: dict[type[Record], tuple[str, object]] = {
    InstanceRecord: ("state", InstanceState.RUNNING),
    ImageRecord: ("properties", {"alias": "tiny"}),
    PoolRecord: ("config", {"quota": "10G"}),
    VolumeRecord: ("attached_to", "web1"),
    SnapshotRecord: ("stateful", True),
    OperationRecord: ("progress", 42.5),
}


@pytest.mark.parametrize("cls", ALL_RECORDS, ids=lambda cls: cls.TABLE)
def test_crud_round_trip(parents: SqliteStore, cls: type[Record]) -> None:
    store = parents
    rec = sample(cls) if cls not in (PoolRecord, InstanceRecord) else sample(cls, name="other")
    key = rec.key()

    assert store.create(rec) == rec
    assert store.get(cls, *key) == rec
    assert store.find(cls, *key) == rec
    assert rec in store.list(cls)

    field, value = CHANGES.get(cls, ("config", {"mtu": "9000"}))
    changed = rec.model_copy(update={field: value})
    stored = store.put(changed)
    assert getattr(store.get(cls, *key), field) == value
    assert store.get(cls, *key) == stored

    store.delete(cls, *key)
    assert store.find(cls, *key) is None
    with pytest.raises(NotFoundError):
        store.get(cls, *key)


@pytest.mark.parametrize(
    ("cls", "key", "message"),
    [
        (InstanceRecord, ("web9",), "instance 'web9' not found"),
        (ImageRecord, (FINGERPRINT,), f"image '{FINGERPRINT}' not found"),
        (SnapshotRecord, ("web1", "daily"), "snapshot 'daily' of instance 'web1' not found"),
        (VolumeRecord, ("default", "disk9"), "volume 'disk9' in pool 'default' not found"),
        (OperationRecord, ("op-9",), "operation 'op-9' not found"),
    ],
)
def test_missing_record_is_named(
    store: SqliteStore, cls: type[Record], key: tuple[str, ...], message: str
) -> None:
    with pytest.raises(NotFoundError) as get_error:
        store.get(cls, *key)
    assert get_error.value.message == message
    with pytest.raises(NotFoundError) as delete_error:
        store.delete(cls, *key)
    assert delete_error.value.message == message


def test_create_refuses_an_existing_key_and_keeps_the_first(store: SqliteStore) -> None:
    first = store.create(sample(InstanceRecord, cpus=2))
    with pytest.raises(ConflictError) as error:
        store.create(sample(InstanceRecord, cpus=4))
    assert error.value.message == "instance 'web1' already exists"
    assert error.value.hint
    assert store.get(InstanceRecord, "web1") == first


def test_put_creates_then_replaces_keeping_created_at(store: SqliteStore) -> None:
    first = store.put(sample(InstanceRecord, created_at=1000.0, updated_at=1000.0))
    assert store.get(InstanceRecord, "web1").created_at == 1000.0
    assert first.updated_at >= time.time() - 60

    # A record made afresh (new created_at) replacing the stored one keeps the stored creation time.
    second = store.put(sample(InstanceRecord, cpus=3))
    assert second.created_at == 1000.0
    assert second.updated_at >= first.updated_at
    got = store.get(InstanceRecord, "web1")
    assert (got.cpus, got.created_at, got.updated_at) == (3, 1000.0, second.updated_at)


def test_put_of_an_instance_keeps_its_snapshots(parents: SqliteStore) -> None:
    parents.create(sample(SnapshotRecord))
    parents.put(sample(InstanceRecord, state=InstanceState.RUNNING))
    assert [s.name for s in parents.list(SnapshotRecord, instance="web1")] == ["daily"]


def test_operation_status_and_progress(store: SqliteStore) -> None:
    op = store.create(OperationRecord(action="copy", target="web1"))
    assert op.status is OperationStatus.PENDING
    store.put(op.model_copy(update={"status": OperationStatus.RUNNING, "progress": 50.0}))
    done = store.get(OperationRecord, op.id)
    assert (done.status, done.progress) == (OperationStatus.RUNNING, 50.0)


def test_list_filters_on_key_fields_and_orders_by_key(parents: SqliteStore) -> None:
    store = parents
    store.create(sample(InstanceRecord, name="web2"))
    for instance, name in [("web2", "b"), ("web1", "c"), ("web1", "a"), ("web2", "a")]:
        store.create(sample(SnapshotRecord, instance=instance, name=name))

    assert [s.key() for s in store.list(SnapshotRecord)] == [
        ("web1", "a"),
        ("web1", "c"),
        ("web2", "a"),
        ("web2", "b"),
    ]
    assert [s.name for s in store.list(SnapshotRecord, instance="web1")] == ["a", "c"]
    assert [s.instance for s in store.list(SnapshotRecord, name="a")] == ["web1", "web2"]
    assert store.list(SnapshotRecord, instance="web2", name="b")[0].key() == ("web2", "b")
    assert store.list(SnapshotRecord, instance="nope") == []
    assert [i.name for i in store.list(InstanceRecord)] == ["web1", "web2"]


def test_list_refuses_a_non_key_filter(store: SqliteStore) -> None:
    with pytest.raises(TypeError, match="by its key fields"):
        store.list(InstanceRecord, state="running")


def test_key_arity_is_checked(store: SqliteStore) -> None:
    with pytest.raises(TypeError, match="keyed by instance, name"):
        store.get(SnapshotRecord, "web1")


def test_deleting_an_instance_deletes_its_snapshots(parents: SqliteStore) -> None:
    parents.create(sample(InstanceRecord, name="web2"))
    parents.create(sample(SnapshotRecord))
    parents.create(sample(SnapshotRecord, name="weekly"))
    parents.create(sample(SnapshotRecord, instance="web2"))

    parents.delete(InstanceRecord, "web1")
    assert [s.key() for s in parents.list(SnapshotRecord)] == [("web2", "daily")]


def test_a_pool_holding_volumes_cannot_be_deleted(parents: SqliteStore) -> None:
    for name in ("disk2", "disk1"):
        parents.create(sample(VolumeRecord, name=name))
    with pytest.raises(ConflictError) as error:
        parents.delete(PoolRecord, "default")
    assert error.value.message == "pool 'default' is in use by 2 volumes (disk1, disk2)"
    assert parents.find(PoolRecord, "default") is not None
    assert len(parents.list(VolumeRecord, pool="default")) == 2

    parents.delete(VolumeRecord, "default", "disk1")
    with pytest.raises(ConflictError, match=r"in use by 1 volume \(disk2\)"):
        parents.delete(PoolRecord, "default")
    parents.delete(VolumeRecord, "default", "disk2")
    parents.delete(PoolRecord, "default")
    assert parents.find(PoolRecord, "default") is None


@pytest.mark.parametrize(
    ("rec", "message"),
    [
        (
            VolumeRecord(pool="nope", name="disk1", size=1),
            "cannot create volume 'disk1' in pool 'nope': pool 'nope' not found",
        ),
        (
            SnapshotRecord(instance="web9", name="daily"),
            "cannot create snapshot 'daily' of instance 'web9': instance 'web9' not found",
        ),
    ],
)
def test_a_record_needs_what_it_belongs_to(store: SqliteStore, rec: Record, message: str) -> None:
    for write in (store.create, store.put):
        with pytest.raises(NotFoundError) as error:
            write(rec)
        assert error.value.message == message
    assert store.list(type(rec)) == []


def test_an_invalid_record_is_refused_on_write(store: SqliteStore) -> None:
    bad = InstanceRecord.model_construct(**{**sample(InstanceRecord).model_dump(), "memory": -1})
    for write in (store.create, store.put):
        with pytest.raises(SpecError, match=r"invalid instance 'web1': memory: .*greater than 0"):
            write(bad)
    assert store.find(InstanceRecord, "web1") is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("{not json", "Invalid JSON"),
        ('{"name": "web1", "kind": "vm", "memory": -5}', "memory"),
        ('{"name": "web7", "kind": "vm"}', "keyed ('web7',)"),
        (42, "data: Input should be an object"),
        (b"\xff\xfe", "Invalid JSON"),
    ],
)
def test_a_damaged_row_is_reported_by_table_and_key(
    store: SqliteStore, raw: sqlite3.Connection, data: object, problem: str
) -> None:
    store.create(sample(InstanceRecord))
    store.create(sample(InstanceRecord, name="web2"))
    raw.execute("UPDATE instances SET data = ? WHERE name = 'web1'", (data,))

    for read in (lambda: store.get(InstanceRecord, "web1"), lambda: store.list(InstanceRecord)):
        with pytest.raises(StoreError) as error:
            read()
        assert "instance 'web1' (table instances) is damaged" in error.value.message
        assert problem in error.value.message
        assert "Traceback" not in error.value.message
    assert store.get(InstanceRecord, "web2").name == "web2"

    store.delete(InstanceRecord, "web1")  # a damaged record can still be removed
    assert [i.name for i in store.list(InstanceRecord)] == ["web2"]


def test_a_closed_store_says_so(store: SqliteStore) -> None:
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreError, match="is closed"):
        store.find(InstanceRecord, "web1")
