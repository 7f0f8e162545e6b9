"""`/1.0/operations`: long actions' status, progress and result; wait for one; cancel one.

A `wait` polls the store from the event loop, each look in a worker thread for a moment only: a
crowd of waiting clients holds no thread, so it cannot starve the rest of the API.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from virtkit.api.context import OPERATOR, VIEWER, ApiContext
from virtkit.model import OperationStatus
from virtkit.ops.operations import WAIT_POLL, get_operation, list_operations

router = APIRouter(prefix="/1.0/operations", tags=["operations"])


@router.get("")
def list_all(status: OperationStatus | None = None, ctx: ApiContext = VIEWER) -> list[dict[str, Any]]:
    return [record.model_dump(mode="json") for record in list_operations(ctx.store, status)]


@router.get("/{operation_id}")
def get_one(operation_id: str, ctx: ApiContext = VIEWER) -> dict[str, Any]:
    return get_operation(ctx.store, operation_id).model_dump(mode="json")


@router.get("/{operation_id}/wait")
async def wait(
    operation_id: str, timeout: float = Query(30, ge=0, le=3600), ctx: ApiContext = VIEWER
) -> dict[str, Any]:
    """The operation once it has ended, or as it is after `timeout` seconds (still running)."""
    deadline = time.monotonic() + timeout
    while True:
        record = await run_in_threadpool(get_operation, ctx.store, operation_id)
        left = deadline - time.monotonic()
        if record.status not in (OperationStatus.PENDING, OperationStatus.RUNNING) or left <= 0:
            return record.model_dump(mode="json")
        await asyncio.sleep(min(WAIT_POLL * 2, left))


@router.delete("/{operation_id}")
def cancel(operation_id: str, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Ask a cancellable operation to stop (409 when it cannot be cancelled safely)."""
    return ctx.operations.cancel(operation_id).model_dump(mode="json")
