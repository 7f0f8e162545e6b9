"""`/1.0/instances/NAME/snapshots`: list, show, take, restore and delete an instance's snapshots.

Reads are the viewer's; changes the operator's, and operations (202), run one at a time with the
instance's other operations: a snapshot of a running VM with its memory, or a restore that stops
and starts the instance again, takes its time. What can be told before (a bad name, an unknown
instance or snapshot, a taken name, a stateful snapshot of a container or of a stopped VM) is a
4xx at once, and no operation is made.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from virtkit.api.bodies import RestoreBody, SnapshotBody
from virtkit.api.context import OPERATOR, VIEWER, ApiContext
from virtkit.api.routes.instances import accepted
from virtkit.ops.operations import Context
from virtkit.ops.snapshots import Snapshots

router = APIRouter(prefix="/1.0/instances/{name}/snapshots", tags=["snapshots"])


def snapshots(ctx: ApiContext) -> Snapshots:
    return Snapshots(ctx.root, ctx.store)


@router.get("")
def list_snapshots(name: str, ctx: ApiContext = VIEWER) -> list[dict[str, Any]]:
    """The instance's snapshots, oldest first."""
    return [record.model_dump(mode="json") for record in snapshots(ctx).list(name)]


@router.post("", status_code=202)
def create_snapshot(
    name: str, response: Response, body: SnapshotBody | None = None, ctx: ApiContext = OPERATOR
) -> dict[str, Any]:
    """Take a snapshot (`name`, default snap0, snap1, ...; `stateful`: a running VM's memory too;
    `expiry`: seconds or a duration such as 7d); the result is {"snapshot", "notes"}."""
    given = body or SnapshotBody()
    expiry = given.check()
    record = snapshots(ctx).check_create(name, given.name, stateful=given.stateful)

    def work(_op: Context) -> dict[str, Any]:
        taken, notes = snapshots(ctx).create(record.name, given.name, stateful=given.stateful, expiry=expiry)
        return {"snapshot": taken.model_dump(mode="json"), "notes": list(notes)}

    return accepted(response, ctx.operations.submit("snapshot-create", record.name, work))


@router.get("/{snapshot}")
def get_snapshot(name: str, snapshot: str, ctx: ApiContext = VIEWER) -> dict[str, Any]:
    """One snapshot: its record, its instance's kind, where its copied files are."""
    return snapshots(ctx).view(name, snapshot).to_dict()


@router.post("/{snapshot}/restore", status_code=202)
def restore_snapshot(
    name: str, snapshot: str, response: Response, body: RestoreBody | None = None, ctx: ApiContext = OPERATOR
) -> dict[str, Any]:
    """Put the instance back to the snapshot (a running one is stopped, restored and started
    again, `wait`: until ready; a stateful one resumes); {"snapshot", "was", "restarted", "resumed"}."""
    found = snapshots(ctx).get(name, snapshot)
    wait = (body or RestoreBody()).wait

    def work(_op: Context) -> dict[str, Any]:
        done = snapshots(ctx).restore(found.instance, found.name, wait=wait)
        return {"snapshot": done.snapshot.model_dump(mode="json"), "was": done.was.value,
                "restarted": done.restarted, "resumed": done.resumed}  # fmt: skip

    return accepted(response, ctx.operations.submit("snapshot-restore", found.instance, work))


@router.delete("/{snapshot}", status_code=202)
def delete_snapshot(
    name: str, snapshot: str, response: Response, ctx: ApiContext = OPERATOR
) -> dict[str, Any]:
    """Delete the snapshot (the instance is not changed); {"snapshot": the record it had}."""
    found = snapshots(ctx).get(name, snapshot)

    def work(_op: Context) -> dict[str, Any]:
        return {"snapshot": snapshots(ctx).delete(found.instance, found.name).model_dump(mode="json")}

    return accepted(response, ctx.operations.submit("snapshot-delete", found.instance, work))
