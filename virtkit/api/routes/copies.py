"""`/1.0/instances/NAME/copy`, `/publish` and `/flatten`: clones of an instance, images of it.

Operator's, and operations (202), run one at a time with the source's other operations: a full
copy or a publish copies whole disks. What can be told before (a bad or taken name or alias, an
unknown instance or snapshot, a source not stopped) is a 4xx at once, and no operation is made.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from virtkit.api.bodies import CopyBody, PublishBody
from virtkit.api.context import OPERATOR, ApiContext
from virtkit.api.routes.instances import accepted
from virtkit.ops.copy import Copies
from virtkit.ops.operations import Context
from virtkit.ops.publish import Publisher

router = APIRouter(prefix="/1.0/instances/{name}", tags=["copies"])


@router.post("/copy", status_code=202)
def copy_instance(
    name: str, body: CopyBody, response: Response, ctx: ApiContext = OPERATOR
) -> dict[str, Any]:
    """Copy to a new instance `target`: linked (instant, on a shared read-only layer) or `full`;
    of `snapshot` if given (the source may run then). {"instance", "mode", "layers", "notes"}."""
    source = Copies(ctx.root, ctx.store).check(name, body.target, snapshot=body.snapshot)

    def work(_op: Context) -> dict[str, Any]:
        copied = Copies(ctx.root, ctx.store).copy(source.name, body.target, snapshot=body.snapshot,
                                                  full=body.full)  # fmt: skip
        return copied.to_dict()

    return accepted(response, ctx.operations.submit("copy", source.name, work))


@router.post("/publish", status_code=202)
def publish_instance(
    name: str, response: Response, body: PublishBody | None = None, ctx: ApiContext = OPERATOR
) -> dict[str, Any]:
    """Make an image of the stopped instance (or of its `snapshot`), named `alias` (default: the
    instance's name); {"image": its record}."""
    given = body or PublishBody()
    alias = Publisher(ctx.root, ctx.store).check(name, alias=given.alias, snapshot=given.snapshot)

    def work(_op: Context) -> dict[str, Any]:
        image = Publisher(ctx.root, ctx.store).publish(name, alias=alias, snapshot=given.snapshot)
        return {"image": image.model_dump(mode="json")}

    return accepted(response, ctx.operations.submit("publish", name, work))


@router.post("/flatten", status_code=202)
def flatten_instance(name: str, response: Response, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Rewrite a stopped clone's layers into a disk or tree of its own; {"instance": its record}."""
    record = Copies(ctx.root, ctx.store).check_flatten(name)

    def work(_op: Context) -> dict[str, Any]:
        return {"instance": Copies(ctx.root, ctx.store).flatten(record.name).model_dump(mode="json")}

    return accepted(response, ctx.operations.submit("flatten", record.name, work))
