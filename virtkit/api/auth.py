"""Who may call the API: the local socket's peers are trusted, TCP clients present a token.

The Unix socket is made mode 0660, owned by root and the `virtkit` group when it exists, so the
kernel decides who connects; every request over it acts as admin. Over TCP every request needs
`Authorization: Bearer vkt_...` of a live token whose role covers the route: 401 without one (or
with an unknown, revoked or expired one), 403 when the role is too low, and the route's work is
never started. Failed attempts are counted per client address: past FAILURES_ALLOWED in WINDOW
seconds the address gets 429 until the window has passed, whatever it presents.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from fastapi import HTTPException, Request

from virtkit.model import Role, TokenRecord
from virtkit.ops.tokens import Tokens

FAILURES_ALLOWED = 10
WINDOW = 60.0


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
            self._failures.setdefault(address, deque()).append(moment)


class Authenticator:
    """Turns a request into a Caller, or refuses it."""

    def __init__(self, tokens: Tokens | None, limiter: Limiter | None = None) -> None:
        self.tokens = tokens  # None: the local socket, everyone who connects is trusted
        self.limiter = limiter or Limiter()

    def caller(self, request: Request) -> Caller:
        if self.tokens is None:
            return LOCAL
        address = request.client.host if request.client else "unknown"
        if self.limiter.blocked(address):
            raise HTTPException(
                429, detail="too many failed authentication attempts: wait a minute",
                headers={"Retry-After": str(int(self.limiter.window))},
            )
        record = self._token(request)
        if record is None:
            self.limiter.failed(address)
            raise HTTPException(
                401, detail="a valid API token is required (Authorization: Bearer vkt_...)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Caller(record.name, record.role)

    def _token(self, request: Request) -> TokenRecord | None:
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
