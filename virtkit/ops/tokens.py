"""API bearer tokens: made, listed, revoked, and checked against a request's `Authorization` header.

A token is `vkt_` followed by 43 URL-safe characters (32 random bytes). The store keeps only its
SHA-256: a token is shown once, at creation, and cannot be recovered (make a new one). SHA-256
rather than a slow password hash is enough because the secret has 256 bits of entropy; what it
protects against is a stolen database, not a guessed password. A presented token is compared
with every stored digest by `hmac.compare_digest`, so the time taken does not say how close it was.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from virtkit.errors import SpecError, StoreError
from virtkit.model import Role, TokenRecord, validate_name
from virtkit.ops.schedule import parse_duration
from virtkit.store import Store

log = logging.getLogger(__name__)

PREFIX = "vkt_"
SECRET_BYTES = 32
MAX_TOKEN_LENGTH = 200  # what a header may carry before we even hash it
USE_RESOLUTION = 60.0  # seconds: last_used_at is written at most this often, not on every request


@dataclass(frozen=True)
class Created:
    record: TokenRecord
    secret: str  # shown once

    def to_dict(self) -> dict[str, object]:
        data = view(self.record)
        data["token"] = self.secret
        return data


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise SpecError(
            f"invalid role {text[:40]!r}", hint="use admin, operator or viewer"
        ) from None


def view(record: TokenRecord) -> dict[str, object]:
    """What `token list` shows: never the digest."""
    data = record.model_dump(mode="json", exclude={"digest"})
    data["expired"] = expired(record)
    return data


def expired(record: TokenRecord, now: float | None = None) -> bool:
    moment = time.time() if now is None else now
    return record.expires_at is not None and record.expires_at <= moment


class Tokens:
    """The tokens of one state root."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str, *, role: str | Role = Role.VIEWER, expires: str | None = None) -> Created:
        name = validate_name(name, what="token name")
        chosen = role if isinstance(role, Role) else parse_role(role)
        expires_at = None
        if expires is not None:
            expires_at = time.time() + parse_duration(expires, what="--expires")
        secret = PREFIX + secrets.token_urlsafe(SECRET_BYTES)
        record = self.store.create(
            TokenRecord(name=name, role=chosen, digest=digest(secret), expires_at=expires_at)
        )
        return Created(record, secret)

    def list(self) -> list[TokenRecord]:
        return self.store.list(TokenRecord)

    def revoke(self, name: str) -> TokenRecord:
        name = validate_name(name, what="token name")
        with self.store.transaction():
            record = self.store.get(TokenRecord, name)
            self.store.delete(TokenRecord, name)
        return record

    def authenticate(self, secret: str) -> TokenRecord | None:
        """The live token this secret is, or None (unknown, revoked or expired)."""
        if not secret.startswith(PREFIX) or len(secret) > MAX_TOKEN_LENGTH:
            return None
        wanted = digest(secret)
        found = None
        for record in self.store.list(TokenRecord):
            # Every digest is compared, found or not, so timing says nothing about the others.
            if hmac.compare_digest(record.digest, wanted):
                found = record
        if found is None or expired(found):
            return None
        return self._used(found)

    def _used(self, record: TokenRecord) -> TokenRecord:
        """`record` with its last use noted (at most every USE_RESOLUTION seconds); a token revoked
        meanwhile is not brought back."""
        now = time.time()
        if record.last_used_at is not None and now - record.last_used_at < USE_RESOLUTION:
            return record
        try:
            with self.store.transaction():
                current = self.store.find(TokenRecord, record.name)
                if current is None or current.digest != record.digest:
                    return record
                return self.store.put(current.model_copy(update={"last_used_at": now}))
        except StoreError as exc:  # a busy store must not refuse a valid token
            log.warning("could not record the use of token %s: %s", record.name, exc)
            return record
