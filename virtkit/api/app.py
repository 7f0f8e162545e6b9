"""The REST API: a FastAPI application over the same ops/ layer the CLI uses.

Versioned under /1.0/. Over TCP the caller's token is checked first of all (auth.Authenticate):
a refused request is not routed, nor its body read. Every error is a JSON document {"error",
"message", "hint"} with the status api/errors.py gives its class, and is documented as such in the
OpenAPI document; bodies past the context's `max_body` get 413 before they are read whole. Routes
live in api/routes/, one module per resource.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from virtkit import __version__
from virtkit.api.auth import Authenticate, Authenticator
from virtkit.api.context import ApiContext
from virtkit.api.errors import status_of
from virtkit.api.schemas import ErrorDocument
from virtkit.errors import VirtkitError
from virtkit.ops.operations import Operations
from virtkit.ops.tokens import Tokens
from virtkit.store import Store

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # JSON requests; uploads (imports) have their own limit
# Documented on every route (the OpenAPI document must say what a client may get back).
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorDocument, "description": text} for status, text in [
        (400, "Invalid request"), (401, "No valid token"), (403, "The token's role is too low"),
        (404, "Not found"), (409, "Conflict with the current state"), (413, "Request body too large"),
        (422, "Invalid request"), (429, "Too many failed authentications"),
        (503, "The host cannot do this"),
    ]
}  # fmt: skip
_NAMES = {400: "SpecError", 401: "AuthError", 403: "AuthError", 404: "NotFoundError",
          405: "SpecError", 409: "ConflictError", 413: "SpecError", 422: "SpecError", 429: "AuthError"}


def document(status: int, message: str, hint: str | None = None, name: str | None = None) -> JSONResponse:
    body = {"error": name or _NAMES.get(status, "VirtkitError"), "message": message, "hint": hint}
    return JSONResponse(body, status_code=status)


def create_app(root: Path, store: Store, *, local: bool, max_body: int = MAX_BODY) -> FastAPI:
    """The application for one state root. `local`: served on the Unix socket (callers trusted);
    otherwise every request needs a token."""
    app = FastAPI(
        title="virtkit", version=__version__, openapi_url="/1.0/openapi.json", docs_url=None, redoc_url=None,
        responses=ERRORS,
    )
    operations = Operations(root, store)
    auth = Authenticator(None if local else Tokens(store))
    app.state.virtkit = ApiContext(root, store, operations, auth, max_body)
    _handlers(app)
    from virtkit.api.routes import ROUTERS

    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(Authenticate, auth=auth)  # outermost: nothing runs for a refused request
    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(VirtkitError)
    async def virtkit_error(_request: Request, exc: VirtkitError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=status_of(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        hint = "ask an admin for a token with that role" if exc.status_code == 403 else None
        response = document(exc.status_code, str(exc.detail), hint)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors()[:5]:
            where = ".".join(str(part) for part in error.get("loc", ()))
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return document(422, "invalid request: " + "; ".join(problems), hint="see /1.0/openapi.json")


class BodyLimit:
    """Refuse request bodies longer than `limit` with 413, by Content-Length or as they stream in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").endswith("/upload"):
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await document(413, f"request body over {self.limit} bytes")(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)
