"""The storage pools and volumes of a remote server, shaped as the local ones.

`RemoteStorage` has the methods of ops.storage.Storage the CLI calls, `RemoteVolumes` those of
ops.volumes.Volumes and `RemoteVolumeSnapshots` those of ops.volumesnaps.VolumeSnapshots, with the
same return types, rebuilt from `/1.0/storage-pools` and `/1.0/volumes` (api/routes/storage.py).
A pool's view there names its volumes only: their records are read beside it, as the local view
holds them. Paths (a pool's, a volume's) are the server's. What the server would refuse by the
shape of a request (an unknown driver, an empty path) is checked here first by the local rules, so
that it fails with the local words.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtkit.api.remote_common import model_of, seg

if TYPE_CHECKING:
    from virtkit.api.client import Client
    from virtkit.model import PoolRecord, VolumeRecord, VolumeSnapshotRecord
    from virtkit.ops.storage import PoolView, VolumeView
    from virtkit.ops.volumes import Attached

POOLS = "/1.0/storage-pools"


def pool_of(document: Mapping[str, Any]) -> PoolRecord:
    from virtkit.model import PoolRecord

    return model_of(PoolRecord, document)


def volume_of(document: Mapping[str, Any]) -> VolumeRecord:
    from virtkit.model import VolumeRecord

    return model_of(VolumeRecord, document)


def pool_view_of(document: Mapping[str, Any], volumes: list[VolumeRecord]) -> PoolView:
    """A PoolView rebuilt from its `to_dict()` and the records of the volumes it names."""
    from virtkit.ops.storage import PoolView
    from virtkit.storage.pools import Capacity

    healthy = document.get("state") == "ok"
    total, free = document.get("total"), document.get("free")
    capacity = Capacity(int(total), int(free)) if total is not None and free is not None else None
    names = list(document.get("volumes") or [])
    held = sorted((v for v in volumes if v.name in names), key=lambda v: names.index(v.name))
    return PoolView(pool_of(document), healthy, capacity, held)


def volume_view_of(document: Mapping[str, Any]) -> VolumeView:
    """A VolumeView rebuilt from its `to_dict()` (the attachment: as much of it as it shows)."""
    from virtkit.model import VolumeAttachment
    from virtkit.ops.storage import VolumeView

    record = volume_of(document)
    device = document.get("attached_device")
    attachment = None
    if device:
        attachment = VolumeAttachment(pool=record.pool, name=record.name, type=record.type,
                                      format=record.format, source=str(document["path"]), device=str(device),
                                      path=document.get("attached_path"))  # fmt: skip
    usage = document.get("usage")
    path = Path(str(document["path"]))
    taken = int(document.get("snapshots") or 0)
    return VolumeView(record, path, int(usage) if usage is not None else None, attachment, taken)


def volume_snapshot_of(document: Mapping[str, Any]) -> VolumeSnapshotRecord:
    from virtkit.model import VolumeSnapshotRecord

    return model_of(VolumeSnapshotRecord, document)


def _noted(document: Mapping[str, Any]) -> tuple[VolumeSnapshotRecord, tuple[str, ...]]:
    return volume_snapshot_of(document), tuple(str(note) for note in document.get("notes") or [])


def attached_of(document: Mapping[str, Any]) -> Attached:
    from virtkit.model import VolumeAttachment
    from virtkit.ops.volumes import Attached

    volume = model_of(VolumeAttachment, document)
    notices = list(document.get("notices") or [])
    return Attached(str(document["instance"]), volume, bool(document["live"]), notices)


def _pool(name: str) -> str:
    from virtkit.units import validate_name

    return f"{POOLS}/{seg(validate_name(name, what='pool name'))}"


def _volume(pool: str, name: str) -> str:
    from virtkit.units import validate_name

    return f"{_pool(pool)}/volumes/{seg(validate_name(name, what='volume name'))}"


def _snapshot(pool: str, volume: str, name: str) -> str:
    from virtkit.units import validate_name

    return f"{_volume(pool, volume)}/snapshots/{seg(validate_name(name, what='snapshot name'))}"


class RemoteStorage:
    """`ops.storage.Storage` through a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # --- pools ----------------------------------------------------------------------------------

    def create_pool(self, name: str, *, driver: str = "dir", path: str | None = None) -> PoolRecord:
        from virtkit.errors import SpecError
        from virtkit.ops.storage import DRIVERS
        from virtkit.storage.pools import normal_path
        from virtkit.units import validate_name

        validate_name(name, what="pool name")
        if driver not in DRIVERS:
            raise SpecError(f"unknown pool driver {driver!r}", hint=f"available: {', '.join(DRIVERS)}")
        body = {"name": name, "driver": driver, "path": normal_path(path) if path is not None else None}
        return pool_of(self.client.request("POST", POOLS, json=body))

    def pool(self, name: str) -> PoolRecord:
        return pool_of(self.client.request("GET", _pool(name)))

    def pool_view(self, name: str) -> PoolView:
        document = self.client.request("GET", _pool(name))
        volumes = [volume_of(v) for v in self.client.request("GET", f"{_pool(name)}/volumes")]
        return pool_view_of(document, volumes)

    def pool_views(self) -> list[PoolView]:
        documents = self.client.request("GET", POOLS)
        volumes = [volume_of(v) for v in self.client.request("GET", "/1.0/volumes")]
        return [pool_view_of(document, [v for v in volumes if v.pool == document["name"]])
                for document in documents]  # fmt: skip

    def delete_pool(self, name: str) -> list[str]:
        return [str(line) for line in self.client.request("DELETE", _pool(name)).get("kept") or []]

    # --- volumes --------------------------------------------------------------------------------

    def volume(self, pool: str, name: str) -> VolumeRecord:
        return volume_of(self.client.request("GET", _volume(pool, name)))

    def volume_view(self, pool: str, name: str) -> VolumeView:
        return volume_view_of(self.client.request("GET", _volume(pool, name)))

    def volume_records(self, pool: str | None = None) -> list[VolumeRecord]:
        path = "/1.0/volumes" if pool is None else f"{_pool(pool)}/volumes"
        return [volume_of(document) for document in self.client.request("GET", path)]

    def create_volume(self, pool: str, name: str, *, size: str | int = "10GiB", type: str = "block",
                      limits: Mapping[str, str] | None = None) -> VolumeRecord:  # fmt: skip
        from virtkit.units import validate_name

        validate_name(name, what="volume name")
        body = {"name": name, "size": size, "type": type, "limits": dict(limits or {})}
        return volume_of(self.client.request("POST", f"{_pool(pool)}/volumes", json=body))

    def resize_volume(self, pool: str, name: str, size: str | int, *, force: bool = False) -> VolumeRecord:
        body = {"size": size, "force": force}
        return volume_of(self.client.request("POST", f"{_volume(pool, name)}/resize", json=body))

    def set_limits(self, pool: str, name: str, values: Mapping[str, str]) -> VolumeRecord:
        return volume_of(self.client.request("PATCH", _volume(pool, name), json={"limits": dict(values)}))

    def unset_limits(self, pool: str, name: str, keys: list[str]) -> VolumeRecord:
        from virtkit.errors import SpecError
        from virtkit.storage import limits as io_limits

        unknown = [key for key in keys if key not in io_limits.KEYS]
        if unknown or not keys:  # as the local verb says it (the server's body would say less)
            raise SpecError(f"unknown volume setting {unknown[0]!r}" if unknown else "nothing to unset",
                            hint=f"volume settings are {io_limits.known_keys()}")  # fmt: skip
        body = {"limits": {key: None for key in keys}}
        return volume_of(self.client.request("PATCH", _volume(pool, name), json=body))

    def delete_volume(self, pool: str, name: str) -> None:
        self.client.request("DELETE", _volume(pool, name))


class RemoteVolumes:
    """`ops.volumes.Volumes` (attach, detach) through a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def attach(self, pool: str, name: str, instance: str, path: str | None = None) -> Attached:
        body = {"instance": instance, "path": path}
        return attached_of(self.client.request("POST", f"{_volume(pool, name)}/attach", json=body))

    def detach(self, pool: str, name: str, instance: str) -> Attached:
        body = {"instance": instance}
        return attached_of(self.client.request("POST", f"{_volume(pool, name)}/detach", json=body))


class RemoteVolumeSnapshots:
    """`ops.volumesnaps.VolumeSnapshots` through a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def list(self, pool: str, volume: str) -> list[VolumeSnapshotRecord]:
        listed = self.client.request("GET", f"{_volume(pool, volume)}/snapshots")
        return [volume_snapshot_of(document) for document in listed]

    def get(self, pool: str, volume: str, name: str) -> VolumeSnapshotRecord:
        return volume_snapshot_of(self.client.request("GET", _snapshot(pool, volume, name)))

    def create(
        self, pool: str, volume: str, name: str | None = None
    ) -> tuple[VolumeSnapshotRecord, tuple[str, ...]]:
        path = f"{_volume(pool, volume)}/snapshots"
        if name is not None:  # checked here, so that a bad name fails with the local words
            _snapshot(pool, volume, name)
        return _noted(self.client.request("POST", path, json={"name": name}))

    def restore(self, pool: str, volume: str, name: str) -> tuple[VolumeSnapshotRecord, tuple[str, ...]]:
        return _noted(self.client.request("POST", f"{_snapshot(pool, volume, name)}/restore"))

    def delete(self, pool: str, volume: str, name: str) -> VolumeSnapshotRecord:
        return volume_snapshot_of(self.client.request("DELETE", _snapshot(pool, volume, name)))
