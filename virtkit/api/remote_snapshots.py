"""Snapshots, copies and publishing of a remote server's instances, shaped as the local ones.

`RemoteSnapshots`, `RemoteCopies` and `RemotePublisher` have the methods of ops.snapshots.Snapshots,
ops.copy.Copies and ops.publish.Publisher that the CLI calls, with their return types, rebuilt
from the answers of `/1.0/instances/NAME/{snapshots,copy,flatten,publish}` (api/routes/snapshots.py,
copies.py); each change is an operation the client waits for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtkit.api.remote_common import model_of, seg

if TYPE_CHECKING:
    from virtkit.api.client import Client
    from virtkit.model import ImageRecord, InstanceRecord, SnapshotRecord
    from virtkit.ops.copy import Copied
    from virtkit.ops.snapshots import Restored, SnapshotView


def snapshot_of(document: dict[str, Any]) -> SnapshotRecord:
    from virtkit.model import SnapshotRecord

    return model_of(SnapshotRecord, document)


class RemoteSnapshots:
    """`ops.snapshots.Snapshots` through a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def _path(self, instance: str, *rest: str) -> str:
        return "/".join([f"/1.0/instances/{seg(instance)}/snapshots", *(seg(part) for part in rest)])

    def list(self, instance: str) -> list[SnapshotRecord]:
        return [snapshot_of(document) for document in self.client.request("GET", self._path(instance))]

    def view(self, instance: str, name: str) -> SnapshotView:
        from virtkit.model import InstanceKind
        from virtkit.ops.snapshots import SnapshotView

        document = self.client.request("GET", self._path(instance, name))
        return SnapshotView(snapshot_of(document), InstanceKind(document["kind"]), Path(document["path"]))

    def create(self, instance: str, name: str | None = None, *, stateful: bool = False,
               expiry: float | None = None) -> tuple[SnapshotRecord, tuple[str, ...]]:  # fmt: skip
        body: dict[str, Any] = {"name": name, "stateful": stateful}
        if expiry is not None:
            body["expiry"] = int(expiry)
        done = self.client.run("POST", self._path(instance), json=body)
        return snapshot_of(done["snapshot"]), tuple(done.get("notes") or ())

    def restore(self, instance: str, name: str, *, wait: bool = False) -> Restored:
        from virtkit.model import InstanceState
        from virtkit.ops.snapshots import Restored

        done = self.client.run("POST", self._path(instance, name, "restore"), json={"wait": wait})
        return Restored(snapshot_of(done["snapshot"]), InstanceState(done["was"]), bool(done["restarted"]),
                        bool(done.get("resumed")))  # fmt: skip

    def delete(self, instance: str, name: str) -> SnapshotRecord:
        return snapshot_of(self.client.run("DELETE", self._path(instance, name))["snapshot"])


def copied_of(document: dict[str, Any]) -> Copied:
    from virtkit.model import InstanceRecord
    from virtkit.ops.copy import Copied

    return Copied(InstanceRecord.model_validate(document["instance"]), str(document["mode"]),
                  tuple(document.get("layers") or ()), tuple(document.get("notes") or ()))  # fmt: skip


class RemoteCopies:
    """`ops.copy.Copies` through a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def copy(self, source: str, target: str, *, snapshot: str | None = None, full: bool = False) -> Copied:
        body = {"target": target, "full": full, "snapshot": snapshot}
        return copied_of(self.client.run("POST", f"/1.0/instances/{seg(source)}/copy", json=body))

    def flatten(self, name: str) -> InstanceRecord:
        from virtkit.model import InstanceRecord

        done = self.client.run("POST", f"/1.0/instances/{seg(name)}/flatten")
        return InstanceRecord.model_validate(done["instance"])


class RemotePublisher:
    """`ops.publish.Publisher` through a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def publish(self, name: str, *, alias: str | None = None, snapshot: str | None = None) -> ImageRecord:
        from virtkit.model import ImageRecord

        body = {"alias": alias, "snapshot": snapshot}
        done = self.client.run("POST", f"/1.0/instances/{seg(name)}/publish", json=body)
        return ImageRecord.model_validate(done["image"])
