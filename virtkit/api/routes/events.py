"""`/1.0/events`: lifecycle events as a Server-Sent Events stream, filterable by type.

`GET /1.0/events?type=instance&type=operation` sends one `data: {json}` message per event from
the moment of the request, and a comment line every HEARTBEAT seconds of silence, so a client that
went away is noticed and its stream closed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

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

    def messages() -> Iterator[str]:
        yield ": virtkit events\n\n"
        for event in events.follow(ctx.root, types=wanted, heartbeat=HEARTBEAT):
            yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n" if event else ": keepalive\n\n"

    return StreamingResponse(messages(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})  # fmt: skip
