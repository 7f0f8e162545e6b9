"""Authentication and authorization over TCP (TLS on 127.0.0.1): every route needs a live token
(401 without one, with a garbage, revoked or expired one), each role's allowed/denied matrix, a
refused request does nothing, failed attempts are rate-limited per address."""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apiserver import Server
from tests.integration.api.conftest import Http, assert_error, fresh_address, make_token, virtkit

OPERATION = "00000000-0000-4000-8000-000000000000"


def _routes(server: Server, http: Http) -> list[tuple[str, str]]:
    """Every (method, path) of the live OpenAPI document, parameters filled in."""
    document = http(server).get("/1.0/openapi.json").json()
    found = []
    for template, methods in document["paths"].items():
        path = template.replace("{operation_id}", OPERATION)
        while "{" in path:
            start = path.index("{")
            path = path[:start] + "c1" + path[path.index("}", start) + 1 :]
        found += [(method.upper(), path) for method in methods]
    assert len(found) >= 15, found
    return found


def _nothing_happened(server: Server, admin: httpx.Client, tokens: list[str]) -> None:
    assert admin.get("/1.0/operations").json() == []
    assert admin.get("/1.0/instances").json() == []
    assert sorted(token["name"] for token in admin.get("/1.0/tokens").json()) == sorted(tokens)
    assert not (server.root / "instances").exists() or list((server.root / "instances").iterdir()) == []


def test_every_route_needs_a_token(tls_server: Server, http: Http, api_root: Path) -> None:
    admin = http(tls_server, make_token(api_root, "admin", "admin"))
    routes = _routes(tls_server, http)
    garbage = ["vkt_" + "A" * 43, "not-a-token", "vkt_", "x" * 5000]
    for index, (method, path) in enumerate(routes):
        if path == "/1.0/openapi.json":
            continue
        anonymous = http(tls_server)  # each from its own address: the limit is not what is tested here
        body = {"image": "tiny", "name": "c1", "config": {"limits.cpu": "1"}, "command": ["true"]}
        answer = anonymous.request(method, path, json=body if method in ("POST", "PATCH", "PUT") else None)
        assert_error(answer, 401, "token")
        assert answer.headers["www-authenticate"] == "Bearer"
        bad = http(tls_server, garbage[index % len(garbage)])
        assert_error(bad.request(method, path), 401)
        basic = http(tls_server, headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
        assert_error(basic.request(method, path), 401)
    _nothing_happened(tls_server, admin, ["admin"])


def test_refused_before_the_body_is_read(tls_server: Server, http: Http) -> None:
    """No token: 401, not 422 for bad JSON or 413 for a huge body (the request is not looked at)."""
    anonymous = http(tls_server)
    headers = {"content-type": "application/json"}
    assert_error(anonymous.post("/1.0/instances", content=b"{bad", headers=headers), 401)
    assert_error(anonymous.post("/1.0/instances", content=b"x" * (2 << 20), headers=headers), 401)
    assert_error(anonymous.get("/1.0/no-such-path"), 401)


def test_only_the_openapi_document_is_public(tls_server: Server, http: Http) -> None:
    answer = http(tls_server).get("/1.0/openapi.json")
    assert answer.status_code == 200 and answer.json()["info"]["title"] == "virtkit"


def test_plain_http_is_not_spoken(tls_server: Server) -> None:
    url = tls_server.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/1.0", timeout=5)
    assert tls_server.process.poll() is None


def test_revoked_token_refused_at_the_next_request(tls_server: Server, http: Http, api_root: Path) -> None:
    secret = make_token(api_root, "soon-gone", "admin")
    client = http(tls_server, secret)
    assert client.get("/1.0").json()["caller"] == {"name": "soon-gone", "role": "admin"}
    revoked = virtkit(api_root, "token", "revoke", "soon-gone")
    assert revoked.returncode == 0, revoked.stderr
    assert_error(client.get("/1.0"), 401)  # the very next request, on the same connection
    assert_error(client.post("/1.0/tokens", json={"name": "sneaky", "role": "admin"}), 401)
    assert virtkit(api_root, "token", "list", "--json").stdout.strip() == "[]"


def test_revoked_through_the_api(tls_server: Server, http: Http, api_root: Path) -> None:
    admin = http(tls_server, make_token(api_root, "admin", "admin"))
    made = admin.post("/1.0/tokens", json={"name": "ci", "role": "operator"})
    assert made.status_code == 201, made.text
    ci = http(tls_server, made.json()["token"])
    assert ci.get("/1.0").json()["caller"]["role"] == "operator"
    assert admin.delete("/1.0/tokens/ci").status_code == 200
    assert_error(ci.get("/1.0/instances"), 401)
    assert_error(admin.delete("/1.0/tokens/ci"), 404)


def test_expired_token_refused(tls_server: Server, http: Http, api_root: Path) -> None:
    secret = make_token(api_root, "brief", "admin", expires="2s")
    client = http(tls_server, secret)
    assert client.get("/1.0").status_code == 200
    time.sleep(2.2)
    assert_error(client.get("/1.0"), 401)
    listed = {token["name"]: token for token in http(tls_server, make_token(api_root, "adm", "admin"))
              .get("/1.0/tokens").json()}  # fmt: skip
    assert listed["brief"]["expired"] is True
    assert "token" not in listed["brief"] and "digest" not in listed["brief"]


# --- the role matrix ------------------------------------------------------------------------------

READS = [("GET", "/1.0"), ("GET", "/1.0/instances"), ("GET", "/1.0/operations"),
         ("GET", "/1.0/host/resources"), ("GET", "/1.0/host/check")]  # fmt: skip
INSTANCE_ACTS: list[tuple[str, str, Any]] = [
    ("POST", "/1.0/instances", {"image": "tiny", "name": "c1", "kind": "container"}),
    ("POST", "/1.0/instances/c1/start", {}),
    ("POST", "/1.0/instances/c1/stop", {"force": True}),
    ("POST", "/1.0/instances/c1/pause", None),
    ("DELETE", "/1.0/instances/c1", None),
    ("POST", "/1.0/instances/c1/exec", {"command": ["true"]}),
    ("PATCH", "/1.0/instances/c1", {"config": {"limits.cpu": "1"}}),
    ("DELETE", f"/1.0/operations/{OPERATION}", None),
]
TOKEN_ACTS: list[tuple[str, str, Any]] = [
    ("GET", "/1.0/tokens", None),
    ("POST", "/1.0/tokens", {"name": "escalated", "role": "admin"}),
    ("DELETE", "/1.0/tokens/admin", None),
]


@pytest.fixture
def roles(tls_server: Server, http: Http, api_root: Path) -> dict[str, httpx.Client]:
    return {role: http(tls_server, make_token(api_root, role, role), address=fresh_address())
            for role in ("admin", "operator", "viewer")}  # fmt: skip


def _call(client: httpx.Client, method: str, path: str, body: Any = None) -> httpx.Response:
    return client.request(method, path, json=body)


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_everyone_reads(roles: dict[str, httpx.Client], role: str) -> None:
    for method, path in READS:
        answer = _call(roles[role], method, path)
        assert answer.status_code == 200, (role, path, answer.text)
    assert roles[role].get("/1.0").json()["caller"] == {"name": role, "role": role}


def test_viewer_cannot_act(tls_server: Server, roles: dict[str, httpx.Client]) -> None:
    for method, path, body in INSTANCE_ACTS + TOKEN_ACTS:
        document = assert_error(_call(roles["viewer"], method, path, body), 403, "viewer")
        assert document["error"] == "AuthError"
    _nothing_happened(tls_server, roles["admin"], ["admin", "operator", "viewer"])


def test_operator_acts_on_instances_not_on_tokens(tls_server: Server, roles: dict[str, httpx.Client]) -> None:
    for method, path, body in TOKEN_ACTS:
        assert_error(_call(roles["operator"], method, path, body), 403, "operator", "admin")
    _nothing_happened(tls_server, roles["admin"], ["admin", "operator", "viewer"])
    _acts_on_instances(roles["operator"], roles["admin"])


def test_admin_can_all(roles: dict[str, httpx.Client]) -> None:
    admin = roles["admin"]
    _acts_on_instances(admin, admin)
    made = admin.post("/1.0/tokens", json={"name": "more", "role": "viewer", "expires": "1d"})
    assert made.status_code == 201 and made.json()["token"].startswith("vkt_")
    assert "more" in [token["name"] for token in admin.get("/1.0/tokens").json()]
    assert admin.delete("/1.0/tokens/more").status_code == 200
    assert_error(admin.post("/1.0/tokens", json={"name": "Bad Name"}), 400, "invalid token name")
    assert_error(admin.post("/1.0/tokens", json={"name": "bad-expiry", "expires": "forever"}), 400,
                 "--expires")  # fmt: skip
    assert_error(admin.post("/1.0/tokens", json={"name": "operator"}), 409)


def _acts_on_instances(actor: httpx.Client, admin: httpx.Client) -> None:
    """Past the role check: the root has no image and no instance, so each act is refused for
    what it asks (404), or starts an operation that fails on the missing image."""
    for method, path, body in INSTANCE_ACTS:
        answer = _call(actor, method, path, body)
        if path == "/1.0/instances":
            assert answer.status_code == 202, answer.text
            done = admin.get(f"/1.0/operations/{answer.json()['id']}/wait", params={"timeout": 30}).json()
            assert done["status"] == "failure" and "tiny" in done["error"], done
        else:
            assert_error(answer, 404)
    assert str(uuid.UUID(admin.get("/1.0/operations").json()[-1]["id"]))


# --- the limit on failed attempts -----------------------------------------------------------------


def test_failed_attempts_are_rate_limited(tls_server: Server, http: Http, api_root: Path) -> None:
    secret = make_token(api_root, "admin", "admin")
    attacker = fresh_address()
    guesser = http(tls_server, "vkt_" + "B" * 43, address=attacker)
    for _ in range(10):
        assert_error(guesser.get("/1.0"), 401)
    blocked = http(tls_server, secret, address=attacker)  # the right token does not help now
    document = assert_error(blocked.get("/1.0"), 429, "too many failed")
    retry = blocked.get("/1.0/instances").headers["retry-after"]
    assert retry.isdigit() and 1 <= int(retry) <= 60
    assert_error(blocked.post("/1.0/instances", json={"image": "tiny", "name": "c1"}), 429)
    assert document["hint"]
    # Others are not locked out, and the blocked request did nothing.
    other = http(tls_server, secret, address=fresh_address())
    assert other.get("/1.0").status_code == 200
    assert other.get("/1.0/operations").json() == []


def test_successes_do_not_count(tls_server: Server, http: Http, api_root: Path) -> None:
    address = fresh_address()
    good = http(tls_server, make_token(api_root, "admin", "admin"), address=address)
    bad = http(tls_server, "vkt_nope", address=address)
    for _ in range(9):
        assert_error(bad.get("/1.0"), 401)
    for _ in range(30):
        assert good.get("/1.0").status_code == 200


def test_websocket_needs_a_token(tls_server: Server) -> None:
    """A console handshake without a token is refused before it is accepted: never 101."""
    assert tls_server.cert is not None
    host, port = tls_server.url[8:].rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(tls_server.cert))
    with context.wrap_socket(
        socket.create_connection((host, int(port)), timeout=10), server_hostname=host
    ) as raw:
        raw.sendall(b"GET /1.0/instances/c1/console HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
        answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
    assert b"a valid API token is required" in answer
