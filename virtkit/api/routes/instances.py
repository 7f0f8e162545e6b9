"""`/1.0/instances`: list, show, launch/create, start/stop/restart/pause/resume, delete, exec, set.

Reads answer at once. Everything that changes an instance is an operation (202 and its document,
`Location: /1.0/operations/ID`): the work runs in the server, one at a time per instance, whoever
disconnects. What a request gets wrong that can be seen before any work (a bad size, a taken name,
an unknown instance) is answered at once with 4xx, and no operation is made.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import APIRouter, Query, Response

from virtkit.api.context import OPERATOR, VIEWER, ApiContext
from virtkit.api.schemas import ActionBody, ExecBody, InstanceBody, SettingsBody
from virtkit.errors import ConflictError
from virtkit.model import InstanceRecord, OperationRecord
from virtkit.ops.lifecycle import Lifecycle
from virtkit.units import validate_name

router = APIRouter(prefix="/1.0/instances", tags=["instances"])

Action = Literal["start", "stop", "restart", "pause", "resume"]


def life(ctx: ApiContext) -> Lifecycle:
    return Lifecycle(ctx.root, ctx.store)


def accepted(response: Response, record: OperationRecord) -> dict[str, Any]:
    response.status_code = 202
    response.headers["Location"] = f"/1.0/operations/{record.id}"
    return record.model_dump(mode="json")


def _existing(ctx: ApiContext, name: str) -> InstanceRecord:
    return ctx.store.get(InstanceRecord, validate_name(name))


@router.get("")
def list_instances(ctx: ApiContext = VIEWER) -> list[dict[str, Any]]:
    """Every instance with its live state (as `virtkit list --json`)."""
    return [view.to_dict() for view in life(ctx).views()]


@router.get("/{name}")
def get_instance(name: str, ctx: ApiContext = VIEWER) -> dict[str, Any]:
    return life(ctx).view(name).to_dict()


@router.get("/{name}/runtime")
def get_runtime(name: str, ctx: ApiContext = VIEWER) -> dict[str, Any]:
    """The saved runtime: the exact QEMU command line, or the OCI config."""
    return life(ctx).runtime(name).to_dict()


@router.post("", status_code=202)
def create_instance(body: InstanceBody, response: Response, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Create (`start: false`) or launch an instance; the operation's result is its record and runtime."""
    request = body.request()
    name = validate_name(request.name)
    if ctx.store.find(InstanceRecord, name) is not None:
        raise ConflictError(f"instance {name!r} already exists", hint="choose another name")

    def work(_op: object) -> dict[str, Any]:
        lifecycle = life(ctx)
        if body.start:
            record, runtime = lifecycle.launch(request, wait=body.wait)
        else:
            record, runtime = lifecycle.create(request)
        return {"instance": record.model_dump(mode="json"), "runtime": runtime.to_dict()}

    return accepted(response, ctx.operations.submit("launch" if body.start else "create", name, work))


@router.post("/{name}/exec")
def exec_command(name: str, body: ExecBody, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Run a command in the instance; its exit code and output (base64: any bytes)."""
    record = _existing(ctx, name)
    done = life(ctx).exec(record.name, body.command, timeout=body.timeout)
    return {"exit_code": done.exit_code, "stdout": base64.b64encode(done.stdout).decode(),
            "stderr": base64.b64encode(done.stderr).decode()}  # fmt: skip


@router.post("/{name}/{action}", status_code=202)
def act(
    name: str, action: Action, response: Response, body: ActionBody | None = None, ctx: ApiContext = OPERATOR
) -> dict[str, Any]:
    """start (`wait`), stop (`force`, `timeout`), restart (`force`, `wait`), pause, resume."""
    record = _existing(ctx, name)
    given = body or ActionBody()

    def work(_op: object) -> dict[str, Any]:
        lifecycle = life(ctx)
        if action == "start":
            done = lifecycle.start(record.name, wait=given.wait)
        elif action == "stop":
            done = lifecycle.stop(record.name, force=given.force, timeout=given.timeout)
        elif action == "restart":
            done = lifecycle.restart(record.name, force=given.force, wait=given.wait)
        elif action == "pause":
            done = lifecycle.pause(record.name)
        else:
            done = lifecycle.resume(record.name)
        return {"instance": done.model_dump(mode="json")}

    return accepted(response, ctx.operations.submit(action, record.name, work))


@router.delete("/{name}", status_code=202)
def delete_instance(
    name: str, response: Response, force: bool = Query(False), ctx: ApiContext = OPERATOR
) -> dict[str, Any]:
    record = _existing(ctx, name)

    def work(_op: object) -> dict[str, Any]:
        return {"instance": life(ctx).delete(record.name, force=force).model_dump(mode="json")}

    return accepted(response, ctx.operations.submit("delete", record.name, work))


@router.patch("/{name}")
def set_settings(name: str, body: SettingsBody, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """`virtkit set NAME key=value...`: the new record, and whether it was applied live."""
    from virtkit.ops.settings import Settings

    record = _existing(ctx, name)
    new, live = Settings(ctx.root, ctx.store).set(record.name, body.config)
    return {"instance": new.model_dump(mode="json"), "applied_live": live}
