"""Reading instances: the list and one instance's record.

Lifecycle verbs (launch, start, stop, ...) join this family when the drivers land.
"""

from __future__ import annotations

from virtkit.model import InstanceRecord, validate_name
from virtkit.store import Store


def list_instances(store: Store) -> list[InstanceRecord]:
    """Every instance, by name."""
    return sorted(store.list(InstanceRecord), key=lambda record: record.name)


def get_instance(store: Store, name: str) -> InstanceRecord:
    """One instance by name; SpecError for an invalid name, NotFoundError if there is none."""
    return store.get(InstanceRecord, validate_name(name))
