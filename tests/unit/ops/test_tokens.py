"""API tokens (ops/tokens.py) on the real SQLite store: made, listed, revoked, checked; stored hashed."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from virtkit.errors import ConflictError, NotFoundError, SpecError
from virtkit.model import Role, TokenRecord
from virtkit.ops.tokens import PREFIX, Tokens, expired, view
from virtkit.store import SqliteStore


@pytest.fixture
def tokens(store: SqliteStore) -> Tokens:
    return Tokens(store)


def _database_bytes(root: Path) -> bytes:
    """The database and its WAL/journal files, as a thief who copied them would have them."""
    return b"".join(path.read_bytes() for path in sorted(root.glob("virtkit.db*")) if path.is_file())


def test_created_token_is_shown_once_and_authenticates(tokens: Tokens) -> None:
    created = tokens.create("ci", role="operator")
    assert created.secret.startswith(PREFIX) and len(created.secret) == len(PREFIX) + 43
    assert created.record.role is Role.OPERATOR
    assert created.record.digest == hashlib.sha256(created.secret.encode()).hexdigest()
    assert created.to_dict()["token"] == created.secret
    found = tokens.authenticate(created.secret)
    assert found is not None and (found.name, found.role) == ("ci", Role.OPERATOR)


def test_two_tokens_have_different_secrets(tokens: Tokens) -> None:
    first, second = tokens.create("one"), tokens.create("two")
    assert first.secret != second.secret
    assert tokens.authenticate(second.secret).name == "two"  # type: ignore[union-attr]


def test_default_role_is_viewer_and_no_expiry(tokens: Tokens) -> None:
    created = tokens.create("reader")
    assert created.record.role is Role.VIEWER and created.record.expires_at is None
    assert view(created.record)["expired"] is False


def test_secret_never_reaches_the_database_file(tokens: Tokens, store: SqliteStore, root: Path) -> None:
    secrets = [tokens.create(f"t{index}", role="admin").secret for index in range(5)]
    store.close()  # checkpoints the WAL: everything is now in the files on disk
    on_disk = _database_bytes(root)
    assert b"t4" in on_disk  # the records are there ...
    for secret in secrets:
        assert secret.encode() not in on_disk  # ... their secrets are not
        assert secret[len(PREFIX) :].encode() not in on_disk
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in on_disk  # only their digests


def test_list_and_view_never_show_secret_or_digest(tokens: Tokens) -> None:
    created = tokens.create("ci", role="admin", expires="1h")
    listed = tokens.list()
    assert [record.name for record in listed] == ["ci"]
    shown = view(listed[0])
    assert "digest" not in shown and "token" not in shown
    assert created.secret not in repr(shown) and created.record.digest not in repr(shown)
    assert shown["role"] == "admin" and shown["expired"] is False


def test_unknown_garbage_and_oversized_secrets_are_refused(tokens: Tokens) -> None:
    created = tokens.create("ci")
    assert tokens.authenticate(created.secret + "x") is None
    assert tokens.authenticate(created.secret[:-1]) is None
    assert tokens.authenticate(created.secret[len(PREFIX) :]) is None  # without its prefix
    assert tokens.authenticate("") is None
    assert tokens.authenticate("vkt_" + "a" * 5000) is None
    assert tokens.authenticate(created.record.digest) is None  # a stolen digest is not a token


def test_revoked_token_is_refused_at_once(tokens: Tokens) -> None:
    created = tokens.create("gone", role="admin")
    assert tokens.authenticate(created.secret) is not None
    revoked = tokens.revoke("gone")
    assert revoked.name == "gone"
    assert tokens.authenticate(created.secret) is None
    assert tokens.list() == []


def test_revoke_unknown_or_invalid_name(tokens: Tokens) -> None:
    with pytest.raises(NotFoundError):
        tokens.revoke("nobody")
    with pytest.raises(SpecError, match="invalid token name"):
        tokens.revoke("Bad Name")


def test_expiry_is_a_duration_from_now(tokens: Tokens) -> None:
    before = time.time()
    record = tokens.create("month", expires="30d").record
    assert record.expires_at is not None
    assert before + 30 * 86400 <= record.expires_at <= time.time() + 30 * 86400
    assert not expired(record)
    assert expired(record, now=record.expires_at)
    assert expired(record, now=record.expires_at + 1)


def test_expired_token_is_refused(tokens: Tokens, store: SqliteStore) -> None:
    created = tokens.create("short", role="admin", expires="1h")
    assert tokens.authenticate(created.secret) is not None
    store.put(created.record.model_copy(update={"expires_at": time.time() - 1}))
    assert tokens.authenticate(created.secret) is None
    assert view(store.get(TokenRecord, "short"))["expired"] is True


def test_use_is_recorded(tokens: Tokens, store: SqliteStore) -> None:
    created = tokens.create("ci")
    assert created.record.last_used_at is None
    before = time.time()
    tokens.authenticate(created.secret)
    used = store.get(TokenRecord, "ci").last_used_at
    assert used is not None and before <= used <= time.time()


def test_duplicate_name_refused(tokens: Tokens) -> None:
    first = tokens.create("ci")
    with pytest.raises(ConflictError):
        tokens.create("ci", role="admin")
    kept = tokens.list()
    assert [(record.name, record.role, record.digest) for record in kept] == [
        ("ci", Role.VIEWER, first.record.digest)
    ]


@pytest.mark.parametrize("name", ["", "Upper", "with space", "1digit", "dash-", "x" * 64, "a_b", "é"])
def test_bad_names_refused(tokens: Tokens, name: str) -> None:
    with pytest.raises(SpecError, match="invalid token name") as caught:
        tokens.create(name)
    assert caught.value.hint
    assert tokens.list() == []


@pytest.mark.parametrize("role", ["root", "", "ADMIN ", "superuser"])
def test_bad_roles_refused(tokens: Tokens, role: str) -> None:
    with pytest.raises(SpecError, match="invalid role") as caught:
        tokens.create("ci", role=role)
    assert "admin, operator or viewer" in (caught.value.hint or "")
    assert tokens.list() == []


@pytest.mark.parametrize("duration", ["forever", "0s", "-1d", "30", "1y", "", "10d junk", "9999w"])
def test_bad_durations_refused(tokens: Tokens, duration: str) -> None:
    with pytest.raises(SpecError, match="invalid --expires") as caught:
        tokens.create("ci", expires=duration)
    assert caught.value.hint and "30m" in caught.value.hint
    assert tokens.list() == []


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.ADMIN.allows(Role.VIEWER)
    assert Role.OPERATOR.allows(Role.VIEWER) and not Role.OPERATOR.allows(Role.ADMIN)
    assert not Role.VIEWER.allows(Role.OPERATOR) and Role.VIEWER.allows(Role.VIEWER)
