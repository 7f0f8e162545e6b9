"""Any sequence of writes, some inside failing transactions, leaves the store equal to a plain dict
that applied only the writes that committed."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from virtkit.errors import ConflictError, NotFoundError
from virtkit.model import InstanceRecord
from virtkit.store import SqliteStore, open_store

NAMES = st.sampled_from(["a", "b", "c"])
OPS = st.lists(
    st.tuples(st.sampled_from(["create", "put", "delete"]), NAMES, st.integers(1, 8)),
    max_size=6,
)


class Abort(Exception):
    pass


def apply(store: SqliteStore, model: dict[str, int], op: str, name: str, cpus: int) -> None:
    """Apply one write to both the store and the model, expecting the same outcome."""
    expected: type[Exception] | None = None
    if op == "create" and name in model:
        expected = ConflictError
    if op == "delete" and name not in model:
        expected = NotFoundError
    try:
        if op == "delete":
            store.delete(InstanceRecord, name)
        else:
            write = store.create if op == "create" else store.put
            write(InstanceRecord(name=name, kind="vm", cpus=cpus))
    except (ConflictError, NotFoundError) as exc:
        assert type(exc) is expected
        return
    assert expected is None
    if op == "delete":
        del model[name]
    else:
        model[name] = cpus


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.tuples(OPS, st.booleans()), max_size=5))
def test_store_matches_a_model_of_committed_writes(
    batches: list[tuple[list[tuple[str, str, int]], bool]],
) -> None:
    model: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "root") as store:
        for ops, commit in batches:
            scratch = dict(model)
            try:
                with store.transaction():
                    for op, name, cpus in ops:
                        apply(store, scratch, op, name, cpus)
                    if not commit:
                        raise Abort
            except Abort:
                continue
            model = scratch
        assert {i.name: int(i.cpus) for i in store.list(InstanceRecord)} == model
