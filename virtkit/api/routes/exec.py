"""`POST /1.0/instances/NAME/exec/stream`: a command's output as it is written, then its exit code.

The answer is newline-delimited JSON (application/x-ndjson), one object a line:

    {"type": "stdout", "data": BASE64}      what the command wrote, as it wrote it (any bytes)
    {"type": "stderr", "data": BASE64}
    {"type": "keepalive"}                   after HEARTBEAT seconds of silence
    {"type": "exit", "exit_code": N}        the last line once the command has ended
    {"type": "error", "error": {...}}       the last line instead, when it could not finish
                                            (ran over its timeout: it was killed)

What can be refused before the command starts (no such instance, not running, no such command in
the container, a bad body) is an ordinary error answer (4xx). A container's output streams; a VM's
agent gives it whole when the command ends (ops/execstream.py). A client that goes away mid-stream
kills the command.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from virtkit.api.context import OPERATOR, ApiContext
from virtkit.api.schemas import ExecBody
from virtkit.errors import VirtkitError
from virtkit.ops.execstream import open_exec

router = APIRouter(prefix="/1.0/instances", tags=["instances"])

HEARTBEAT = 15.0
NDJSON = "application/x-ndjson"


class ReleasingResponse(StreamingResponse):
    """A streaming answer whose `release` runs once it has ended however it ended: sent whole,
    the client gone (Starlette then drops the body iterator without closing it) or cancelled.

    `interrupt` (quick, any thread) is called the moment the client is seen gone: the body's
    worker thread may be waiting for the next piece, and the answer cannot end before it returns."""

    def __init__(self, content: Iterator[bytes] | AsyncIterator[bytes], release: Callable[[], None],
                 interrupt: Callable[[], None] | None = None, **kwargs: object) -> None:  # fmt: skip
        super().__init__(content, **kwargs)  # type: ignore[arg-type]
        self.release = release
        self.interrupt = interrupt

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)
        if self.interrupt is not None:
            self.interrupt()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # a read may be in progress in a worker thread
                await anyio.to_thread.run_sync(self.release)


def _line(document: dict[str, object]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


OUTPUT: dict[int | str, dict[str, Any]] = {
    200: {"content": {NDJSON: {}}, "description": "the output, line by line"},
}


@router.post("/{name}/exec/stream", response_class=StreamingResponse, responses=OUTPUT)
def exec_stream(name: str, body: ExecBody, ctx: ApiContext = OPERATOR) -> StreamingResponse:
    """Run a command in the instance; its stdout/stderr streamed as written, then its exit code."""
    stream = open_exec(ctx.root, ctx.store, name, body.command, timeout=body.timeout)

    def lines() -> Iterator[bytes]:
        try:
            for fd, data in stream.pieces(HEARTBEAT):
                if fd == 0:
                    yield _line({"type": "keepalive"})
                else:
                    kind = "stdout" if fd == 1 else "stderr"
                    yield _line({"type": kind, "data": base64.b64encode(data).decode()})
        except VirtkitError as exc:
            yield _line({"type": "error", "error": exc.to_dict()})
            return
        yield _line({"type": "exit", "exit_code": stream.exit_code})

    return ReleasingResponse(lines(), stream.close, stream.interrupt, media_type=NDJSON,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
