"""`/1.0/migrations`: this host as the destination of a live move (ops/migratein.py; the source's
side is ops/movelive.py, run by `virtkit move --live` on the source host).

Admin's only: an offer makes an instance with the UUID, MACs and addresses the caller names and
opens two TCP ports for the source's QEMU. The ports listen on the address the caller reached this
server at. Each call answers when done (a prepare takes a QEMU start, a few seconds).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from virtkit.api.context import ADMIN, ApiContext
from virtkit.errors import SpecError
from virtkit.ops.migratein import Incoming, Offer
from virtkit.units import validate_name

router = APIRouter(prefix="/1.0/migrations", tags=["migrations"])


@router.post("")
def prepare_migration(offer: Offer, request: Request, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """Define the VM here and start its QEMU waiting; {"name", "host", "nbd_port", "migrate_port",
    "exports": {block node: NBD export name}}."""
    host = request.url.hostname
    if not host or host in ("localhost", "unix") or request.client is None:
        raise SpecError("a live move needs this server on a TCP address (virtkit serve --listen HOST:PORT)")
    return Incoming(ctx.root, ctx.store).prepare(offer, host).to_dict()


@router.get("/{name}")
def migration_state(name: str, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """{"name", "incoming": still arriving, "state": the instance's state here}."""
    return Incoming(ctx.root, ctx.store).state(validate_name(name))


@router.post("/{name}/finish")
def finish_migration(name: str, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """The source has switched over: run the guest here; the instance's record."""
    return Incoming(ctx.root, ctx.store).finish(validate_name(name)).model_dump(mode="json")


@router.delete("/{name}")
def abort_migration(name: str, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """Discard an instance still arriving (never one of this host's own)."""
    Incoming(ctx.root, ctx.store).abort(validate_name(name))
    return {"name": name, "discarded": True}
