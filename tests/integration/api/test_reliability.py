"""The server survives what clients do wrong: bad JSON and bad values (4xx with a clear error
document, nothing done), bodies over the limit (413, by Content-Length or streamed), event streams
dropped mid-way or held open by the dozen."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.apiserver import Server
from tests.integration.api.conftest import Http, assert_error, make_token

MIB = 1024 * 1024
JSON = {"content-type": "application/json"}


@pytest.fixture
def local(servers: Callable[..., Server], api_root: Path) -> Server:
    return servers(api_root)


@pytest.fixture
def admin(local: Server, http: Http) -> httpx.Client:
    return http(local)


def _nothing_done(admin: httpx.Client) -> None:
    assert admin.get("/1.0/operations").json() == []
    assert admin.get("/1.0/instances").json() == []


@pytest.mark.parametrize(("body", "needle"), [
    (b"{bad", "JSON"),
    (b'{"image": "tiny", "name": "c1"', "JSON"),
    (b"\xff\xfe not utf-8", ""),
    (b"[1, 2]", "body"),
    (b'"a string"', "body"),
    (b"null", "body"),
    (b'{"image": 5, "name": "c1"}', "image"),
    (b'{"image": "tiny"}', "name"),
    (b'{"image": "tiny", "name": "c1", "surprise": true}', "surprise"),
    (b'{"image": "tiny", "name": "c1", "cpus": -1}', "cpus"),
    (b'{"image": "tiny", "name": "c1", "kind": "toaster"}', "kind"),
    (b'{"image": "tiny", "name": "c1", "config": {"a": 1}}', "config"),
    (b'[' * 200_000 + b']' * 200_000, ""),
    (b'{"a":' * 100_000 + b'1' + b'}' * 100_000, ""),
])  # fmt: skip
def test_bad_json_is_a_clear_4xx(admin: httpx.Client, local: Server, body: bytes, needle: str) -> None:
    answer = admin.post("/1.0/instances", content=body, headers=JSON)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    document = assert_error(answer, answer.status_code, needle)
    assert len(document["message"]) < 1000
    _nothing_done(admin)
    assert local.process.poll() is None


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"image": "tiny", "name": "Bad_Name"}, 400, "invalid instance name"),
    ({"image": "tiny", "name": "c1", "memory": "lots"}, 400, "memory"),
    ({"image": "tiny", "name": "c1", "nics": ["no such=thing=x"]}, 400, ""),
    ({"image": "tiny", "name": "c1", "publish": ["99999:80"]}, 400, ""),
])  # fmt: skip
def test_bad_values_refused_before_any_work(
    admin: httpx.Client, body: object, status: int, needle: str
) -> None:
    assert_error(admin.post("/1.0/instances", json=body), status, needle)
    _nothing_done(admin)


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("PATCH", "/1.0/instances/c1", {"config": {}}, 422),
    ("PATCH", "/1.0/instances/c1", {"config": {"limits.cpu": "2"}}, 404),
    ("POST", "/1.0/instances/c1/explode", {}, 422),
    ("POST", "/1.0/instances/c1/exec", {"command": []}, 422),
    ("POST", "/1.0/instances/c1/stop", {"timeout": -5}, 422),
    ("POST", "/1.0/instances/c1/stop", [1], 422),
    ("GET", "/1.0/instances/" + "a" * 300, None, 400),
    ("GET", "/1.0/instances/UPPER", None, 400),
    ("GET", "/1.0/operations?status=bogus", None, 422),
    ("GET", "/1.0/operations/not-a-uuid", None, 400),
    ("GET", "/1.0/operations/00000000-0000-4000-8000-000000000000", None, 404),
    ("GET", "/1.0/operations/00000000-0000-4000-8000-000000000000/wait?timeout=-1", None, 422),
    ("GET", "/1.0/operations/00000000-0000-4000-8000-000000000000/wait?timeout=nan", None, 422),
    ("DELETE", "/1.0/operations/00000000-0000-4000-8000-000000000000", None, 404),
    ("POST", "/1.0/tokens", {"name": "t", "role": "root"}, 422),
    ("POST", "/1.0/tokens", {"name": "t", "expires": "0s"}, 400),
    ("DELETE", "/1.0/tokens/nobody", None, 404),
    ("GET", "/1.0/events?type=gossip", None, 400),
    ("PUT", "/1.0/instances", None, 405),
])  # fmt: skip
def test_bad_requests_get_an_error_document(
    admin: httpx.Client, method: str, path: str, body: object, status: int
) -> None:
    assert_error(admin.request(method, path, json=body), status)
    _nothing_done(admin)


def test_body_over_the_limit_by_content_length(admin: httpx.Client, local: Server) -> None:
    big = b'{"image": "tiny", "name": "c1", "config": {"x": "' + b"y" * (2 * MIB) + b'"}}'
    assert_error(admin.post("/1.0/instances", content=big, headers=JSON), 413, "over")
    # Only the header is needed: a client announcing 1 TiB is answered before it sends a byte.
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(local.url[5:])
        raw.sendall(b"POST /1.0/instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1099511627776\r\n\r\n")  # fmt: skip
        raw.settimeout(10)
        assert raw.recv(100).startswith(b"HTTP/1.1 413")
    _nothing_done(admin)


def test_body_over_the_limit_streamed(admin: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"image": "tiny", "name": "c1", "config": {"x": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}}'

    answer = admin.post("/1.0/instances", content=chunks(), headers=JSON)
    assert answer.request.headers.get("transfer-encoding") == "chunked"
    assert_error(answer, 413, "over")
    _nothing_done(admin)


def test_body_at_the_limit_is_read(admin: httpx.Client) -> None:
    prefix, suffix = b'{"image": "tiny", "name": "c1", "padding": "', b'"}'
    body = prefix + b"y" * (MIB - len(prefix) - len(suffix)) + suffix
    assert len(body) == MIB
    answer = admin.post("/1.0/instances", content=body, headers=JSON)
    assert_error(answer, 422, "padding")  # read whole, and refused for what it says


def _events(client: httpx.Client, wanted: int, timeout: float = 20) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    with client.stream("GET", "/1.0/events", params={"type": "operation"}, timeout=timeout) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                found.append(json.loads(line[6:]))
                if len(found) >= wanted:
                    break
    return found


def _stream_then_drop(server: Server, token: str | None) -> None:
    """Open an event stream, read its first bytes, and drop the connection without a word."""
    raw: socket.socket
    if server.url.startswith("unix:"):
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(server.url[5:])
    else:
        host, port = server.url[8:].rsplit(":", 1)
        context = ssl.create_default_context(cafile=str(server.cert))
        plain = socket.create_connection((host, int(port)), timeout=10)
        raw = context.wrap_socket(plain, server_hostname=host)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    raw.sendall(f"GET /1.0/events HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
    raw.settimeout(10)
    assert raw.recv(200).startswith(b"HTTP/1.1 200")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    raw.close()


def test_dropped_event_streams_do_not_hurt(local: Server, admin: httpx.Client) -> None:
    for _ in range(30):
        _stream_then_drop(local, None)
    began = time.monotonic()
    assert admin.get("/1.0").status_code == 200
    assert time.monotonic() - began < 2
    seen: list[dict[str, object]] = []
    reader = threading.Thread(target=lambda: seen.extend(_events(admin, 2)), daemon=True)
    reader.start()
    time.sleep(0.5)
    made = admin.post("/1.0/instances", json={"image": "nope", "name": "c1"})  # fails at once: events
    assert made.status_code == 202
    reader.join(20)
    assert [event["action"] for event in seen][:1] == ["created"], seen
    assert all(event["type"] == "operation" for event in seen)
    assert local.process.poll() is None


def test_many_open_event_streams_leave_the_server_answering(
    tls_server: Server, http: Http, api_root: Path
) -> None:
    """Each open stream must not hold one of the server's worker threads: 60 watchers (more than
    its thread pool) and the API still answers at once."""
    token = make_token(api_root, "watcher", "viewer")
    watchers = [http(tls_server, token) for _ in range(60)]
    streams = [client.stream("GET", "/1.0/events", timeout=30) for client in watchers]
    opened = [stream.__enter__() for stream in streams]
    try:
        assert all(answer.status_code == 200 for answer in opened)
        began = time.monotonic()
        other = http(tls_server, token)
        assert other.get("/1.0/instances").status_code == 200
        assert other.get("/1.0/operations").status_code == 200
        assert time.monotonic() - began < 3
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)
    for _ in range(10):
        _stream_then_drop(tls_server, token)
    assert http(tls_server, token).get("/1.0").status_code == 200
