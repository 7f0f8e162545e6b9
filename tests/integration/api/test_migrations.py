"""`/1.0/migrations` (this host as a live move's destination) with wrong and hostile offers: each
is refused with the error document and leaves the store as it was; only an admin may offer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver import Server
from tests.e2e.conftest import seed_root, tiny_template  # noqa: F401  (the session fixture)
from tests.integration.api.conftest import Http, assert_error, make_token, virtkit

pytestmark = pytest.mark.root


@pytest.fixture
def served(api_root: Path, tiny_template: Path, servers: Callable[..., Server],  # noqa: F811
           tmp_path: Path) -> Iterator[tuple[Server, Path]]:  # fmt: skip
    seed_root(tiny_template, api_root)
    server = servers(api_root, tls=tmp_path / "tls")
    yield server, api_root
    server.stop()
    for instance in json.loads(virtkit(api_root, "list", "--json").stdout or "[]"):
        virtkit(api_root, "delete", "--force", instance["name"], timeout=120)


def offer(root: Path, **changes: Any) -> dict[str, Any]:
    image = json.loads(virtkit(root, "image", "list", "--json").stdout)[0]["fingerprint"]
    body = {"name": "v1", "uuid": str(uuid.uuid4()), "image": image, "cpus": 1, "memory": 256 << 20,
            "disks": ["disk0"]}  # fmt: skip
    return {**body, **changes}


def state(root: Path) -> tuple[str, list[str]]:
    listed = virtkit(root, "list", "--json").stdout
    return listed, sorted(p.name for p in root.glob("instances/*"))


def test_hostile_offers_are_refused_and_change_nothing(served: tuple[Server, Path], http: Http) -> None:
    server, root = served
    admin = http(server, make_token(root, "admin", "admin"))
    virtkit(root, "create", "tiny", "mine", "--vm")
    before = state(root)
    cases: list[tuple[dict[str, Any], int, str]] = [
        (offer(root, name="../etc"), 400, "invalid instance name"),
        (offer(root, name="x" * 200), 400, "invalid instance name"),
        (offer(root, uuid="not-a-uuid"), 422, ""),
        (offer(root, image="0" * 64), 404, "is not on this host"),
        (offer(root, image="../../etc/passwd"), 422, ""),
        (offer(root, memory=-1), 422, ""),
        (offer(root, cpus=10_000), 422, ""),
        (offer(root, disks=["disk0", "disk1"]), 400, "not this VM's"),
        (offer(root, nics=[{"network": "lan", "mac": "zz:zz"}]), 422, ""),
        (offer(root, nics=[{"network": "nowhere", "mac": "02:00:00:00:00:01"}]), 404, "nowhere"),
        (offer(root, name="mine"), 409, "exists on this host"),
        (offer(root, extra="field"), 422, ""),
    ]
    for body, status, needle in cases:
        answer = admin.post("/1.0/migrations", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert_error(answer, status, *([needle] if needle else []))
    garbage = admin.post("/1.0/migrations", content=b"{not json",
                         headers={"content-type": "application/json"})  # fmt: skip
    assert_error(garbage, 422)
    assert state(root) == before
    # nothing but an instance still arriving can be discarded or finished through these routes
    assert_error(admin.delete("/1.0/migrations/mine"), 409, "this host's own")
    assert_error(admin.post("/1.0/migrations/mine/finish"), 409, "this host's own")
    assert_error(admin.get("/1.0/migrations/nope"), 404)
    assert state(root) == before


def test_only_an_admin_may_offer(served: tuple[Server, Path], http: Http) -> None:
    server, root = served
    for role in ("viewer", "operator"):
        client = http(server, make_token(root, role, role))
        assert_error(client.post("/1.0/migrations", json=offer(root)), 403)
        assert_error(client.delete("/1.0/migrations/v1"), 403)
    assert_error(http(server).post("/1.0/migrations", json=offer(root)), 401)
    assert state(root)[1] == []
