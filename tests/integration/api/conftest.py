"""Fixtures of the API tests: a real `virtkit serve` (tests/apiserver.py), tokens made with the
CLI as an admin would make them, and httpx clients that can come from any loopback address (the
failed-authentication limit counts per client address)."""

from __future__ import annotations

import itertools
import json
import os
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apiserver import VIRTKIT, Server, servers  # noqa: F401  (the fixture)
from tests.permissions import reachable

Http = Callable[..., httpx.Client]

_addresses = itertools.count(1 << 16)  # from 127.1.0.0: all of 127/8 is loopback


def fresh_address() -> str:
    """A loopback address no client of this test session has yet connected from."""
    number = next(_addresses)
    return f"127.{number >> 16 & 255}.{number >> 8 & 255}.{max(1, number & 255)}"


def virtkit(root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIRTKIT_ROOT": str(root)}
    return subprocess.run([str(VIRTKIT), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)  # fmt: skip


def make_token(root: Path, name: str, role: str = "viewer", expires: str | None = None) -> str:
    """`virtkit token create NAME --role ROLE --json`: the secret."""
    args = ["token", "create", name, "--role", role, "--json"] + (["--expires", expires] if expires else [])
    made = virtkit(root, *args)
    assert made.returncode == 0, made.stderr
    secret: str = json.loads(made.stdout)["token"]
    return secret


@pytest.fixture
def api_root(tmp_path: Path) -> Path:
    """A fresh state root (no images), reachable by unprivileged users and QEMU."""
    return reachable(tmp_path / "root")


@pytest.fixture
def tls_server(servers: Callable[..., Server], api_root: Path, tmp_path: Path) -> Server:  # noqa: F811
    return servers(api_root, tls=tmp_path / "tls")


@pytest.fixture
def http() -> Iterator[Http]:
    """http(server, token=None, address=None): an httpx client of `server`, pinned to its
    certificate, connecting from `address` (default: a loopback address of its own)."""
    made: list[httpx.Client] = []

    def connect(server: Server, token: str | None = None, *, address: str | None = None,
                timeout: float = 60, headers: dict[str, str] | None = None,
                **options: Any) -> httpx.Client:  # fmt: skip
        headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        if server.url.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=server.url[5:])
            client = httpx.Client(transport=transport, base_url="http://virtkit", headers=headers,
                                  timeout=timeout, **options)  # fmt: skip
        else:
            pinned = ssl.create_default_context(cafile=str(server.cert))
            transport = httpx.HTTPTransport(local_address=address or fresh_address(), verify=pinned)
            client = httpx.Client(transport=transport, base_url=server.url, headers=headers, timeout=timeout,
                                  **options)  # fmt: skip
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def assert_error(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    """An error answer: `status`, and the error document {"error", "message", "hint"}."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    assert set(document) == {"error", "message", "hint"}, document
    assert isinstance(document["error"], str) and document["error"].endswith("Error")
    assert isinstance(document["message"], str) and document["message"]
    assert document["hint"] is None or isinstance(document["hint"], str)
    assert "Traceback" not in response.text
    for needle in needles:
        assert needle in document["message"] + " " + (document["hint"] or ""), document
    return document
