"""`/1.0/storage-pools` and their volumes; `/1.0/volumes`, every pool's volumes.

Reads are the viewer's. Pools are the admin's (a pool is a directory of the host the server may
be told to take); volumes the operator's, as the instances they are attached to. Every change is
a moment's work under the storage lock (a qcow2 made or resized, a directory, a record), so it
answers at once, with the same errors the CLI prints: a bad name or size 400, an unknown pool or
volume 404, a taken name 409, a pool holding volumes or an attached volume 409. A volume's
snapshots (`.../volumes/NAME/snapshots`) too: a qcow2 internal snapshot, or a copy of a directory
made while the request waits, as `volume create` makes its disk.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from virtkit.api.bodies import (
    InstanceRef,
    LimitsBody,
    PoolBody,
    ResizeBody,
    Strict,
    VolumeAttachBody,
    VolumeBody,
)
from virtkit.api.context import ADMIN, OPERATOR, VIEWER, ApiContext
from virtkit.model import VolumeSnapshotRecord
from virtkit.ops.storage import Storage
from virtkit.ops.volumes import Attached, Volumes
from virtkit.ops.volumesnaps import VolumeSnapshots
from virtkit.units import validate_name

router = APIRouter(prefix="/1.0", tags=["storage"])
POOLS = "/storage-pools"
VOLUME = POOLS + "/{pool}/volumes/{name}"


def storage(ctx: ApiContext) -> Storage:
    return Storage(ctx.root, ctx.store)


class VolumeSnapshotBody(Strict):
    """`POST .../volumes/NAME/snapshots`: `virtkit volume snapshot create POOL NAME [SNAP]`."""

    name: str | None = None  # default: snap0, snap1, ...

    def check(self) -> str | None:
        return None if self.name is None else validate_name(self.name, what="snapshot name")


def _noted(record: VolumeSnapshotRecord, notes: tuple[str, ...]) -> dict[str, Any]:
    return {**record.model_dump(mode="json"), "notes": list(notes)}


def _attached(done: Attached) -> dict[str, Any]:
    return {"instance": done.instance, "live": done.live, "notices": done.notices,
            **done.volume.model_dump(mode="json")}  # fmt: skip


# --- pools --------------------------------------------------------------------------------------


@router.get(POOLS)
def list_pools(ctx: ApiContext = VIEWER) -> list[dict[str, Any]]:
    """Every pool: driver, path, state, capacity, free space, volumes (`default` always exists)."""
    return [view.to_dict() for view in storage(ctx).pool_views()]


@router.post(POOLS, status_code=201)
def create_pool(body: PoolBody, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """Create a pool on `path` (absolute; an empty or new directory; default ROOT/pools/NAME)."""
    body.check()
    return storage(ctx).create_pool(body.name, driver=body.driver, path=body.path).model_dump(mode="json")


@router.get(POOLS + "/{pool}")
def get_pool(pool: str, ctx: ApiContext = VIEWER) -> dict[str, Any]:
    return storage(ctx).pool_view(pool).to_dict()


@router.delete(POOLS + "/{pool}")
def delete_pool(pool: str, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """Delete an empty pool (409 while it holds volumes; `default` never); what was kept, and why."""
    verbs = storage(ctx)
    record = verbs.pool(pool)
    kept = verbs.delete_pool(record.name)
    return {**record.model_dump(mode="json"), "kept": kept}


# --- volumes ------------------------------------------------------------------------------------


@router.get("/volumes")
def list_all_volumes(ctx: ApiContext = VIEWER) -> list[dict[str, Any]]:
    """Every pool's volumes."""
    return [record.model_dump(mode="json") for record in storage(ctx).volume_records()]


@router.get(POOLS + "/{pool}/volumes")
def list_volumes(pool: str, ctx: ApiContext = VIEWER) -> list[dict[str, Any]]:
    return [record.model_dump(mode="json") for record in storage(ctx).volume_records(pool)]


@router.post(POOLS + "/{pool}/volumes", status_code=201)
def create_volume(pool: str, body: VolumeBody, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """A qcow2 disk for VMs (`block`) or a directory for containers (`filesystem`), with IO
    `limits` (`limits.read_iops`, ...: applied when a block volume is attached)."""
    limits = body.check()
    record = storage(ctx).create_volume(pool, body.name, size=body.size, type=body.type, limits=limits)
    return record.model_dump(mode="json")


@router.get(VOLUME)
def get_volume(pool: str, name: str, ctx: ApiContext = VIEWER) -> dict[str, Any]:
    """One volume: its record, path, actual usage, limits, and how it is attached."""
    return storage(ctx).volume_view(pool, name).to_dict()


@router.patch(VOLUME)
def set_limits(pool: str, name: str, body: LimitsBody, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Set IO limits (`{"limits": {"limits.read_iops": "500"}}`; null unsets one); the volume."""
    values, gone = body.split()
    verbs = storage(ctx)
    record = verbs.volume(pool, name)  # an unknown pool or volume: 404 before any change
    if values:
        record = verbs.set_limits(pool, name, values)
    if gone:
        record = verbs.unset_limits(pool, name, gone)
    return record.model_dump(mode="json")


@router.post(VOLUME + "/resize")
def resize_volume(pool: str, name: str, body: ResizeBody, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Grow a volume to `size` (shrinking a block volume needs `force`); the volume."""
    body.check()
    return storage(ctx).resize_volume(pool, name, body.size, force=body.force).model_dump(mode="json")


@router.delete(VOLUME)
def delete_volume(pool: str, name: str, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Delete a volume and its data (409 while attached); the record it had."""
    verbs = storage(ctx)
    record = verbs.volume(pool, name)
    verbs.delete_volume(record.pool, record.name)
    return record.model_dump(mode="json")


@router.post(VOLUME + "/attach", status_code=201)
def attach_volume(pool: str, name: str, body: VolumeAttachBody, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Attach to `instance`: a container mounts a filesystem volume at `path` (at once if it runs);
    a stopped VM gets a block volume as a disk at its next start."""
    instance = body.check()
    return _attached(Volumes(ctx.root, ctx.store).attach(pool, name, instance, body.path))


@router.post(VOLUME + "/detach")
def detach_volume(pool: str, name: str, body: InstanceRef, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Detach from `instance` (at once if it runs); the data stays in the volume."""
    return _attached(Volumes(ctx.root, ctx.store).detach(pool, name, body.check()))


# --- volume snapshots ---------------------------------------------------------------------------


@router.get(VOLUME + "/snapshots")
def list_volume_snapshots(pool: str, name: str, ctx: ApiContext = VIEWER) -> list[dict[str, Any]]:
    """The volume's snapshots, oldest first."""
    return [
        record.model_dump(mode="json") for record in VolumeSnapshots(ctx.root, ctx.store).list(pool, name)
    ]


@router.post(VOLUME + "/snapshots", status_code=201)
def create_volume_snapshot(
    pool: str, name: str, body: VolumeSnapshotBody, ctx: ApiContext = OPERATOR
) -> dict[str, Any]:
    """Snapshot the volume as `name` (default snap0, snap1, ...); the record, and `notes`."""
    return _noted(*VolumeSnapshots(ctx.root, ctx.store).create(pool, name, body.check()))


@router.get(VOLUME + "/snapshots/{snapshot}")
def get_volume_snapshot(pool: str, name: str, snapshot: str, ctx: ApiContext = VIEWER) -> dict[str, Any]:
    return VolumeSnapshots(ctx.root, ctx.store).get(pool, name, snapshot).model_dump(mode="json")


@router.post(VOLUME + "/snapshots/{snapshot}/restore")
def restore_volume_snapshot(
    pool: str, name: str, snapshot: str, ctx: ApiContext = OPERATOR
) -> dict[str, Any]:
    """Put the volume back to the snapshot (409 while attached to a running instance)."""
    return _noted(*VolumeSnapshots(ctx.root, ctx.store).restore(pool, name, snapshot))


@router.delete(VOLUME + "/snapshots/{snapshot}")
def delete_volume_snapshot(pool: str, name: str, snapshot: str, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Delete the snapshot; the record it had."""
    return VolumeSnapshots(ctx.root, ctx.store).delete(pool, name, snapshot).model_dump(mode="json")
