"""Transactions: all or nothing, nesting with savepoints, isolation from other connections, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from store_samples import sample

from virtkit.errors import ConflictError
from virtkit.model import InstanceRecord, InstanceState, OperationRecord, SnapshotRecord
from virtkit.store import SqliteStore, open_store


class Boom(Exception):
    pass


def names(store: SqliteStore) -> list[str]:
    return [i.name for i in store.list(InstanceRecord)]


def test_an_exception_undoes_every_write_of_the_transaction(store: SqliteStore) -> None:
    store.create(sample(InstanceRecord, name="keep"))
    with pytest.raises(Boom), store.transaction():
        store.create(sample(InstanceRecord, name="web1"))
        store.create(sample(InstanceRecord, name="web2"))
        store.put(sample(InstanceRecord, name="keep", state=InstanceState.RUNNING))
        store.delete(InstanceRecord, "keep")
        raise Boom
    assert names(store) == ["keep"]
    assert store.get(InstanceRecord, "keep").state is InstanceState.STOPPED


def test_a_base_exception_rolls_back_too(store: SqliteStore) -> None:
    with pytest.raises(KeyboardInterrupt), store.transaction():
        store.create(sample(InstanceRecord))
        raise KeyboardInterrupt
    assert names(store) == []


def test_a_store_error_inside_rolls_back_what_came_before(store: SqliteStore) -> None:
    store.create(sample(InstanceRecord, name="web2"))
    with pytest.raises(ConflictError), store.transaction():
        store.create(sample(InstanceRecord, name="web1"))
        store.create(sample(InstanceRecord, name="web2"))
    assert names(store) == ["web2"]


def test_commit_makes_writes_visible_to_other_processes_only_then(store: SqliteStore, root: Path) -> None:
    with open_store(root) as other:
        with store.transaction():
            store.create(sample(InstanceRecord))
            assert store.find(InstanceRecord, "web1") is not None  # a transaction sees its own writes
            assert other.find(InstanceRecord, "web1") is None
        assert other.find(InstanceRecord, "web1") is not None


def test_a_nested_failure_caught_inside_undoes_only_the_inner_part(store: SqliteStore) -> None:
    with store.transaction():
        store.create(sample(InstanceRecord, name="outer"))
        with pytest.raises(Boom), store.transaction():
            store.create(sample(InstanceRecord, name="inner"))
            raise Boom
        store.create(sample(InstanceRecord, name="after"))
    assert names(store) == ["after", "outer"]


def test_a_nested_failure_that_propagates_undoes_everything(store: SqliteStore) -> None:
    with pytest.raises(Boom), store.transaction():
        store.create(sample(InstanceRecord, name="outer"))
        with store.transaction():
            store.create(sample(InstanceRecord, name="middle"))
            with store.transaction():
                store.create(sample(InstanceRecord, name="inner"))
            raise Boom
    assert names(store) == []


def test_nested_successes_commit_with_the_outer_one(store: SqliteStore, root: Path) -> None:
    with open_store(root) as other, store.transaction():
        with store.transaction():
            store.create(sample(InstanceRecord, name="inner"))
        assert other.find(InstanceRecord, "inner") is None  # released savepoint, not yet committed
    assert names(store) == ["inner"]


def test_the_store_works_after_a_failed_transaction(store: SqliteStore) -> None:
    for _ in range(3):
        with pytest.raises(Boom), store.transaction(), store.transaction():
            store.create(sample(InstanceRecord))
            raise Boom
    with store.transaction():
        store.create(sample(InstanceRecord))
    assert names(store) == ["web1"]


def test_an_instance_and_its_snapshot_are_written_together(store: SqliteStore) -> None:
    with pytest.raises(Boom), store.transaction():
        store.create(sample(InstanceRecord))
        store.create(sample(SnapshotRecord))
        raise Boom
    assert store.list(SnapshotRecord) == []
    assert names(store) == []


def test_threads_sharing_a_store_take_turns_without_losing_updates(store: SqliteStore) -> None:
    store.create(OperationRecord(id="counter", action="count"))
    errors: list[BaseException] = []

    def bump(times: int) -> None:
        try:
            for _ in range(times):
                with store.transaction():
                    op = store.get(OperationRecord, "counter")
                    store.put(op.model_copy(update={"progress": op.progress + 1}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(20,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert store.get(OperationRecord, "counter").progress == 80
