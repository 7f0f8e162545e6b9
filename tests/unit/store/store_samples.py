"""Sample records for the store's tests (a module, not conftest, so tests can import it by a
name no other test directory uses)."""

from __future__ import annotations

from typing import Any

from virtkit.model import (
    ImageRecord,
    InstanceRecord,
    NetworkRecord,
    OperationRecord,
    PoolRecord,
    Record,
    SnapshotRecord,
    VolumeRecord,
)

FINGERPRINT = "ab" * 32


def sample(cls: type[Record], **overrides: Any) -> Record:
    """A valid record of `cls`; its parents (pool "default", instance "web1") are the fixtures'."""
    fields: dict[type[Record], dict[str, Any]] = {
        InstanceRecord: {"name": "web1", "kind": "vm"},
        ImageRecord: {"fingerprint": FINGERPRINT, "name": "busybox", "format": "qcow2"},
        NetworkRecord: {"name": "lan"},
        PoolRecord: {"name": "default", "path": "/var/lib/virtkit/pools/default"},
        VolumeRecord: {"pool": "default", "name": "disk1", "size": 1 << 30},
        SnapshotRecord: {"instance": "web1", "name": "daily"},
        OperationRecord: {"id": "op-1", "action": "launch", "target": "web1"},
    }
    return cls(**{**fields[cls], **overrides})


ALL_RECORDS = [
    InstanceRecord,
    ImageRecord,
    NetworkRecord,
    PoolRecord,
    VolumeRecord,
    SnapshotRecord,
    OperationRecord,
]
