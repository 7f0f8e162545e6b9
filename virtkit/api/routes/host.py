"""`/1.0`, `/1.0/host/check`, `/1.0/host/resources`: the server and the host it runs on."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from virtkit import __version__
from virtkit.api.auth import Caller
from virtkit.api.context import VIEWER, ApiContext, caller

router = APIRouter(prefix="/1.0", tags=["host"])


@router.get("")
def server_info(ctx: ApiContext = VIEWER, who: Caller = Depends(caller)) -> dict[str, Any]:  # noqa: B008
    """What this server is, and who the caller is to it."""
    return {"api_version": "1.0", "version": __version__, "root": str(ctx.root),
            "caller": {"name": who.name, "role": who.role.value}}  # fmt: skip


@router.get("/host/check")
def host_check(ctx: ApiContext = VIEWER) -> dict[str, Any]:
    """`virtkit host check`: every probe's PASS/WARN/FAIL and how to fix it."""
    from virtkit.ops.host import check_host

    return check_host(ctx.root).to_dict()


@router.get("/host/resources")
def host_resources(ctx: ApiContext = VIEWER) -> dict[str, Any]:
    """CPUs and memory the host has, and what its instances are given."""
    from virtkit.ops.resources import host_usage

    return host_usage(ctx.root, ctx.store)
