"""`/1.0/events`: lifecycle events as a Server-Sent Events stream, filterable by type.

`GET /1.0/events?type=instance&type=operation` sends one `data: {json}` message per event from
the moment of the request, and a comment line every HEARTBEAT seconds of silence, so a client that
went away is noticed and its stream closed. The stream polls the events file from the event loop
(reads that never wait): an open stream holds no worker thread, so a crowd of watchers cannot
starve the rest of the API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from virtkit.api.context import VIEWER, ApiContext
from virtkit.errors import SpecError
from virtkit.ops import events

router = APIRouter(prefix="/1.0/events", tags=["events"])

HEARTBEAT = 5.0


@router.get("", response_class=StreamingResponse)
def stream(
    type: list[str] | None = Query(None, max_length=8),  # noqa: B008 - the query's name
    ctx: ApiContext = VIEWER,
) -> StreamingResponse:
    wanted = frozenset(type) if type else None
    unknown = sorted((wanted or frozenset()) - set(events.TYPES))
    if unknown:
        raise SpecError(f"unknown event type {unknown[0][:40]!r}", hint="types: " + ", ".join(events.TYPES))

    tail = events.Tail(ctx.root, types=wanted)
    tail.read()  # opened now: what happens from this request on is sent, nothing older

    async def messages() -> AsyncIterator[str]:
        try:
            yield ": virtkit events\n\n"
            quiet_since = time.monotonic()
            while True:
                found = tail.read()
                for event in found:
                    yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
                if found:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= HEARTBEAT:
                    quiet_since = time.monotonic()
                    yield ": keepalive\n\n"
                await asyncio.sleep(events.POLL)
        finally:
            tail.close()

    return StreamingResponse(messages(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})  # fmt: skip
