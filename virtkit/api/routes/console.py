"""`/1.0/instances/NAME/console`: the instance's console over a WebSocket (operator role).

Binary messages carry bytes both ways: what the client sends is typed on the console, what the
console says is sent back as it comes. A text message `{"resize": [ROWS, COLUMNS]}` sets the
window size of a container's terminal (nothing to do for a VM's serial line). The console ends
when the instance stops (close 1000, "the console closed") or the client goes; either way the
console's socket is closed at once, and nothing runs on for a client that left.

The caller is checked from the handshake's Authorization header by the same Authenticator as every
HTTP route (same tokens, same counting of failures: over TCP the Authenticate middleware has done
it, and refused a missing or bad token, before the route runs), then its role, before the handshake
is accepted: a refusal here (a role below operator, or an instance without a console to attach to)
answers the handshake itself with the error's status (403, 404, 409) and its JSON document, by
the ASGI WebSocket denial response; a server without that extension closes instead, with code
4000 + the status (4403, 4404...). Nothing is opened for a refused caller.

No thread per console: the console's non-blocking socket is read and written by the event loop.
A client that stops reading for SLOW_CLIENT seconds is dropped; the console is not read meanwhile
(what the instance writes waits in the socket, as on a terminal nobody reads).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from virtkit.api.auth import Caller, check_role
from virtkit.api.context import ApiContext
from virtkit.api.errors import status_of
from virtkit.drivers.console import SEND_TIMEOUT, Console
from virtkit.errors import VirtkitError
from virtkit.model import Role
from virtkit.ops.lifecycle import Lifecycle

log = logging.getLogger(__name__)

router = APIRouter(prefix="/1.0/instances", tags=["instances"])

SLOW_CLIENT = 30.0  # seconds a client may take to accept one message before it is dropped
CLOSE_TIMEOUT = 2.0


@router.websocket("/{name}/console")
async def console(websocket: WebSocket, name: str) -> None:
    ctx: ApiContext = websocket.app.state.virtkit
    refused = await _authorize(ctx, websocket)
    if refused is not None:
        await _refuse(websocket, *refused)
        return
    try:
        conn = await anyio.to_thread.run_sync(Lifecycle(ctx.root, ctx.store).open_console, name)
    except VirtkitError as exc:
        await _refuse(websocket, status_of(exc), exc.to_dict())
        return
    try:
        await websocket.accept()
        await _relay(websocket, conn)
    finally:
        conn.close()


async def _authorize(ctx: ApiContext, websocket: WebSocket) -> tuple[int, dict[str, Any]] | None:
    """None when the caller may use consoles, else the refusal's status and document. The caller
    is the one the Authenticate middleware found (TCP), or found here by the same Authenticator."""

    def check() -> None:
        found = websocket.scope.get("state", {}).get("caller")
        check_role(found if isinstance(found, Caller) else ctx.auth.caller(websocket), Role.OPERATOR)

    try:
        await anyio.to_thread.run_sync(check)  # a token lookup reads the store
    except HTTPException as exc:
        name = {401: "AuthError", 403: "AuthError", 429: "AuthError"}.get(exc.status_code, "VirtkitError")
        return exc.status_code, {"error": name, "message": str(exc.detail), "hint": None}
    return None


async def _refuse(websocket: WebSocket, status: int, document: dict[str, Any]) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(document, status_code=status))
    else:
        await websocket.close(code=4000 + status, reason=str(document.get("message", ""))[:120])


async def _relay(websocket: WebSocket, conn: Console) -> None:
    """Bytes both ways until the console closes, the client goes, or it stops reading."""
    reason = ""
    async with anyio.create_task_group() as group:

        async def outward() -> None:
            nonlocal reason
            reason = await _to_client(websocket, conn)
            group.cancel_scope.cancel()

        async def inward() -> None:
            await _from_client(websocket, conn)
            group.cancel_scope.cancel()

        group.start_soon(outward)
        group.start_soon(inward)
    if reason and websocket.application_state is WebSocketState.CONNECTED:
        with anyio.move_on_after(CLOSE_TIMEOUT):  # a client that reads nothing gets no close either
            await websocket.close(code=1000 if reason.startswith("the console") else 1008, reason=reason)


async def _to_client(websocket: WebSocket, conn: Console) -> str:
    """Send what the console says until it closes; why it ended ("" when the client left)."""
    loop = asyncio.get_running_loop()
    while True:
        data = await _recv(loop, conn)
        if data is None:
            return "the console closed: the instance stopped"
        with anyio.move_on_after(SLOW_CLIENT) as waited:
            try:
                await websocket.send_bytes(data)
            except (WebSocketDisconnect, OSError, RuntimeError):  # the client is gone
                return ""
        if waited.cancelled_caught:
            log.info("console client too slow (%.0f s for one message): dropped", SLOW_CLIENT)
            return f"too slow: a message waited {SLOW_CLIENT:.0f} s"


async def _recv(loop: asyncio.AbstractEventLoop, conn: Console) -> bytes | None:
    """The console's next output (None once it closed), waiting in the event loop."""
    while True:
        data = conn.recv()
        if data is None or data:
            return data
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(conn.fileno())


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _from_client(websocket: WebSocket, conn: Console) -> None:
    """Type what the client sends on the console until it goes."""
    loop = asyncio.get_running_loop()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data:
            try:
                with anyio.fail_after(SEND_TIMEOUT):
                    await loop.sock_sendall(conn.conn, data)
            except (TimeoutError, OSError) as exc:  # the console takes no input (or closed): end
                log.info("console input refused: %s", exc or "timed out")
                return
        elif message.get("text"):
            _control(conn, message["text"])


def _control(conn: Console, text: str) -> None:
    try:
        document = json.loads(text)
        rows, columns = document["resize"]
        if isinstance(rows, int) and isinstance(columns, int) and 0 < rows < 10000 and 0 < columns < 10000:
            conn.resize(rows, columns)
    except (ValueError, KeyError, TypeError):
        log.debug("console control message ignored: %.80r", text)
