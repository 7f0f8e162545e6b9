"""What every route reaches through FastAPI's dependencies: the state root, its store, the
operation runner, and the caller's role."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, Request

from virtkit.api.auth import Authenticator, Caller, check_role
from virtkit.model import Role
from virtkit.ops.operations import Operations
from virtkit.store import Store


@dataclass
class ApiContext:
    root: Path
    store: Store
    operations: Operations
    auth: Authenticator
    max_body: int


def context(request: Request) -> ApiContext:
    found: ApiContext = request.app.state.virtkit
    return found


def caller(request: Request) -> Caller:
    """Who made the request: found by the Authenticate middleware (TCP), or the local socket's admin."""
    found = getattr(request.state, "caller", None)
    return found if isinstance(found, Caller) else context(request).auth.caller(request)


def role(needed: Role) -> Callable[..., ApiContext]:
    """A dependency: the context, once the caller is known to have at least `needed`."""

    def dependency(request: Request, who: Caller = Depends(caller)) -> ApiContext:  # noqa: B008
        check_role(who, needed)
        return context(request)

    return dependency


VIEWER = Depends(role(Role.VIEWER))
OPERATOR = Depends(role(Role.OPERATOR))
ADMIN = Depends(role(Role.ADMIN))
