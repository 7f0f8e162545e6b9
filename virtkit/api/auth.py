"""Who may call the API: the local socket's peers are trusted, TCP clients present a token.

The Unix socket is made mode 0660, owned by root and the `virtkit` group when it exists, so the
kernel decides who connects; every request over it acts as admin. Over TCP every request needs
`Authorization: Bearer vkt_...` of a live token whose role covers the route: 401 without one (or
with an unknown, revoked or expired one), 403 when the role is too low, and the route's work is
never started. The token is checked by the `Authenticate` middleware, before the request is routed
or its body read: a refused request has no effect, and tells nothing (not even which paths exist)
but that a token is needed. Only the OpenAPI document is public. Failed attempts are counted per
client address: past FAILURES_ALLOWED in WINDOW seconds the address gets 429 until the oldest of
them has left the window, whatever it presents.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import anyio
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from virtkit.model import Role, TokenRecord
from virtkit.ops.tokens import Tokens

FAILURES_ALLOWED = 10
WINDOW = 60.0
MAX_ADDRESSES = 10_000  # addresses with recent failures kept before quiet ones are pruned
PUBLIC = frozenset({"/1.0/openapi.json"})  # what a client reads before it has a token
TOKEN_HINT = "make one with `virtkit token create NAME --role ROLE` on the server's host"


@dataclass
class Caller:
    """Who made a request: a token's name and role, or the local socket (admin)."""

    name: str
    role: Role


LOCAL = Caller("local", Role.ADMIN)


@dataclass
class Limiter:
    """Failed authentications per client address, in a sliding window."""

    allowed: int = FAILURES_ALLOWED
    window: float = WINDOW
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def blocked(self, address: str, now: float | None = None) -> bool:
        moment = time.monotonic() if now is None else now
        with self._guard:
            recent = self._failures.get(address)
            if recent is None:
                return False
            while recent and recent[0] <= moment - self.window:
                recent.popleft()
            if not recent:
                del self._failures[address]
                return False
            return len(recent) >= self.allowed

    def failed(self, address: str, now: float | None = None) -> None:
        moment = time.monotonic() if now is None else now
        with self._guard:
            if len(self._failures) >= MAX_ADDRESSES:  # many addresses: forget those gone quiet
                quiet = [key for key, times in self._failures.items() if times[-1] <= moment - self.window]
                for key in quiet:
                    del self._failures[key]
            recent = self._failures.setdefault(address, deque())
            recent.append(moment)
            while len(recent) > self.allowed:  # older ones no longer decide anything
                recent.popleft()

    def retry_after(self, address: str, now: float | None = None) -> int:
        """Whole seconds until `address` is no longer blocked (at least 1)."""
        moment = time.monotonic() if now is None else now
        with self._guard:
            recent = self._failures.get(address)
            oldest = recent[0] if recent else moment
        return max(1, math.ceil(oldest + self.window - moment))


class Authenticator:
    """Turns a request into a Caller, or refuses it."""

    def __init__(self, tokens: Tokens | None, limiter: Limiter | None = None) -> None:
        self.tokens = tokens  # None: the local socket, everyone who connects is trusted
        self.limiter = limiter or Limiter()

    def caller(self, request: HTTPConnection) -> Caller:
        if self.tokens is None:
            return LOCAL
        address = request.client.host if request.client else "unknown"
        if self.limiter.blocked(address):
            wait = self.limiter.retry_after(address)
            raise HTTPException(
                429, detail=f"too many failed authentication attempts from {address}: retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )  # fmt: skip
        record = self._token(request)
        if record is None:
            self.limiter.failed(address)
            raise HTTPException(
                401, detail="a valid API token is required (Authorization: Bearer vkt_...): this one is "
                "missing, unknown, revoked or expired", headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        return Caller(record.name, record.role)

    def _token(self, request: HTTPConnection) -> TokenRecord | None:
        assert self.tokens is not None
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return None
        return self.tokens.authenticate(secret.strip())


def check_role(caller: Caller, needed: Role) -> None:
    if not caller.role.allows(needed):
        raise HTTPException(
            403, detail=f"token {caller.name!r} has role {caller.role.value}; this needs {needed.value}"
        )


def refusal(exc: HTTPException) -> JSONResponse:
    """The error document of a refused request."""
    hint = {401: TOKEN_HINT, 429: "a valid token does not help until then"}.get(exc.status_code)
    body = {"error": "AuthError", "message": str(exc.detail), "hint": hint}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


class Authenticate:
    """ASGI middleware: over TCP, the caller of every request (but PUBLIC paths) is found from its
    token before anything else looks at the request; a refused one is answered here (a WebSocket
    is refused before it is accepted). Routes read the caller from the scope's state."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.auth.tokens is None or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        try:  # the store is read (and the token's use written) off the event loop
            who = await anyio.to_thread.run_sync(self.auth.caller, HTTPConnection(scope))
        except HTTPException as exc:
            if scope["type"] == "websocket":
                await _refuse_websocket(scope, receive, send, exc)
            else:
                await refusal(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = who
        await self.app(scope, receive, send)


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send, exc: HTTPException) -> None:
    """The refusal as an HTTP answer to the handshake where the server can send one, else a close
    with code 4000 + the status (4401, 4429), as routes/console.py refuses."""
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        websocket = WebSocket(scope, receive, send)
        await websocket.send_denial_response(refusal(exc))
        return
    await send({"type": "websocket.close", "code": 4000 + exc.status_code, "reason": str(exc.detail)[:120]})
