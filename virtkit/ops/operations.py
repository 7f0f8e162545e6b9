"""Reading long-running operations and their progress."""

from __future__ import annotations

import uuid

from virtkit.errors import SpecError
from virtkit.model import OperationRecord, OperationStatus
from virtkit.store import Store


def list_operations(store: Store, status: OperationStatus | None = None) -> list[OperationRecord]:
    """Operations, oldest first, optionally only those in one status."""
    records = store.list(OperationRecord)
    if status is not None:
        records = [record for record in records if record.status == status]
    return sorted(records, key=lambda record: record.created_at)


def get_operation(store: Store, operation_id: str) -> OperationRecord:
    """One operation by its UUID."""
    try:
        canonical = str(uuid.UUID(operation_id))
    except ValueError:
        shown = operation_id[:80]
        raise SpecError(
            f"invalid operation id {shown!r}: expected a UUID",
            hint="`virtkit operation list` shows the ids",
        ) from None
    return store.get(OperationRecord, canonical)
