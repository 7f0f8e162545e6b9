"""`/1.0/tokens`: API tokens, for admins only. A new token's secret is in the answer, once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from virtkit.api.context import ADMIN, ApiContext
from virtkit.api.schemas import TokenBody
from virtkit.ops.tokens import Tokens, view

router = APIRouter(prefix="/1.0/tokens", tags=["tokens"])


@router.get("")
def list_tokens(ctx: ApiContext = ADMIN) -> list[dict[str, Any]]:
    return [view(record) for record in Tokens(ctx.store).list()]


@router.post("", status_code=201)
def create_token(body: TokenBody, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    return Tokens(ctx.store).create(body.name, role=body.role, expires=body.expires).to_dict()


@router.delete("/{name}")
def revoke_token(name: str, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """Revoked at once: the next request with it gets 401."""
    return view(Tokens(ctx.store).revoke(name))
