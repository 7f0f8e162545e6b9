"""Instances through the API, with the tiny image and real runc/QEMU: a container's life (launch,
exec, stop, delete), the role matrix on a live one, 50 parallel requests on 10 containers, and a
server killed mid-operation."""

from __future__ import annotations

import base64
import itertools
import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apiserver import Server
from tests.e2e.conftest import seed_root, tiny_template  # noqa: F401  (the session fixture)
from tests.integration.api.conftest import Http, assert_error, make_token, virtkit

pytestmark = pytest.mark.root

ENDED = ("success", "failure", "cancelled")
AFTER = {"start": "running", "resume": "running", "stop": "stopped", "pause": "paused", "launch": "running"}


@pytest.fixture
def tiny_root(api_root: Path, tiny_template: Path) -> Iterator[Path]:  # noqa: F811
    """A state root holding the tiny image; every instance left at the end is deleted."""
    seed_root(tiny_template, api_root)
    yield api_root
    listed = virtkit(api_root, "list", "--json")
    for instance in json.loads(listed.stdout or "[]"):
        deleted = virtkit(api_root, "delete", "--force", instance["name"], timeout=120)
        print(f"deleted {instance['name']} ({instance['state']}): {deleted.returncode} {deleted.stderr}")


@pytest.fixture
def serve(tiny_root: Path, servers: Callable[..., Server]) -> Iterator[Callable[..., Server]]:
    """`servers`, stopped before tiny_root deletes what is left (their locks released)."""
    started: list[Server] = []

    def start(root: Path, **options: Any) -> Server:
        started.append(servers(root, **options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def local(serve: Callable[..., Server], tiny_root: Path) -> Server:
    return serve(tiny_root)


def _wait(client: httpx.Client, answer: httpx.Response, timeout: float = 120) -> dict[str, Any]:
    """The operation a 202 answer started, once it has ended."""
    assert answer.status_code == 202, answer.text
    operation = answer.json()
    assert answer.headers["location"] == f"/1.0/operations/{operation['id']}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step = min(30.0, deadline - time.monotonic())
        record: dict[str, Any] = client.get(f"/1.0/operations/{operation['id']}/wait",
                                            params={"timeout": step}, timeout=step + 30).json()  # fmt: skip
        if record["status"] in ENDED:
            return record
    raise AssertionError(f"operation {operation} still running after {timeout} s")


def _succeeded(client: httpx.Client, answer: httpx.Response, timeout: float = 120) -> dict[str, Any]:
    record = _wait(client, answer, timeout)
    assert record["status"] == "success", (record["action"], record["error"], record["result"])
    return record


def _state(client: httpx.Client, name: str) -> str:
    answer = client.get(f"/1.0/instances/{name}")
    assert answer.status_code == 200, answer.text
    state: str = answer.json()["state"]
    return state


def _launch(client: httpx.Client, name: str, **extra: Any) -> httpx.Response:
    return client.post("/1.0/instances", json={"image": "tiny", "name": name, "kind": "container", **extra})


def test_container_life(local: Server, http: Http, tiny_root: Path) -> None:
    api = http(local)
    launched = _succeeded(api, _launch(api, "c1", wait=True))
    assert launched["result"]["instance"]["name"] == "c1"
    shown = api.get("/1.0/instances/c1").json()
    assert shown["state"] == "running" and shown["kind"] == "container" and isinstance(shown["pid"], int)
    assert (
        "config.json" in json.dumps(api.get("/1.0/instances/c1/runtime").json())
        or api.get("/1.0/instances/c1/runtime").status_code == 200
    )

    done = api.post("/1.0/instances/c1/exec", json={"command": ["hostname"]})
    assert done.status_code == 200, done.text
    assert (done.json()["exit_code"], base64.b64decode(done.json()["stdout"])) == (0, b"c1\n")
    script = ["sh", "-c", "echo out; echo err >&2; exit 3"]
    failing = api.post("/1.0/instances/c1/exec", json={"command": script})
    result = failing.json()
    assert (result["exit_code"], base64.b64decode(result["stdout"]), base64.b64decode(result["stderr"])) == (
        3, b"out\n", b"err\n")  # fmt: skip
    missing = api.post("/1.0/instances/c1/exec", json={"command": ["/no/such/command"]}).json()
    assert missing["exit_code"] == 127 and b"not found" in base64.b64decode(missing["stderr"])

    assert_error(_launch(api, "c1"), 409, "already exists")
    refused = _wait(api, api.delete("/1.0/instances/c1"))
    assert refused["status"] == "failure" and "stop it first" in refused["result"]["error"]["hint"] + \
        refused["error"], refused  # fmt: skip
    assert _state(api, "c1") == "running"
    _succeeded(api, api.post("/1.0/instances/c1/stop", json={"timeout": 30}), timeout=60)
    assert _state(api, "c1") == "stopped"
    again = _wait(api, api.post("/1.0/instances/c1/stop"))
    assert again["status"] == "failure" and "already stopped" in again["error"]
    assert again["result"]["error"]["error"].endswith("Error")

    _succeeded(api, api.delete("/1.0/instances/c1"))
    assert_error(api.get("/1.0/instances/c1"), 404)
    assert not (tiny_root / "instances" / "c1").exists()
    assert api.get("/1.0/instances").json() == []


def test_roles_on_a_live_container(
    serve: Callable[..., Server], local: Server, http: Http, tiny_root: Path, tmp_path: Path
) -> None:
    api = http(local)
    _succeeded(api, _launch(api, "live", wait=True))
    remote = serve(tiny_root, tls=tmp_path / "tls")
    viewer = http(remote, make_token(tiny_root, "viewer", "viewer"))
    operator = http(remote, make_token(tiny_root, "operator", "operator"))
    before = api.get("/1.0/operations").json()

    assert viewer.get("/1.0/instances/live").json()["state"] == "running"
    for method, path, body in [
        ("POST", "/1.0/instances/live/stop", {"force": True}),
        ("POST", "/1.0/instances/live/pause", None),
        ("DELETE", "/1.0/instances/live?force=true", None),
        ("POST", "/1.0/instances/live/exec", {"command": ["touch", "/viewer-was-here"]}),
        ("PATCH", "/1.0/instances/live", {"config": {"limits.memory": "128MiB"}}),
        ("POST", "/1.0/instances", {"image": "tiny", "name": "sneaky", "kind": "container"}),
    ]:
        assert_error(viewer.request(method, path, json=body), 403, "viewer")
    time.sleep(1)  # what a refused request would have started, had it started anything
    assert api.get("/1.0/operations").json() == before
    assert [i["name"] for i in api.get("/1.0/instances").json()] == ["live"]
    assert _state(api, "live") == "running"
    touched = api.post("/1.0/instances/live/exec", json={"command": ["test", "-e", "/viewer-was-here"]})
    assert touched.json()["exit_code"] == 1
    assert_error(operator.get("/1.0/tokens"), 403)

    _succeeded(operator, operator.post("/1.0/instances/live/pause"))
    assert _state(viewer, "live") == "paused"
    _succeeded(operator, operator.post("/1.0/instances/live/stop", json={"timeout": 30}), timeout=60)
    assert _state(viewer, "live") == "stopped"


# --- concurrency --------------------------------------------------------------------------------


def _spans(root: Path) -> dict[str, list[tuple[float, float, str, str]]]:
    """Per target, each operation's (running since, ended at, action, id) from the event log."""
    began: dict[str, float] = {}
    spans: dict[str, list[tuple[float, float, str, str]]] = {}
    for path in (root / "events.jsonl.1", root / "events.jsonl"):
        for line in path.read_text().splitlines() if path.exists() else []:
            event = json.loads(line)
            if event["type"] != "operation":
                continue
            details = event["details"]
            if event["action"] == "running":
                began[details["id"]] = event["time"]
            elif event["action"] in ENDED:
                start = began.pop(details["id"])
                spans.setdefault(event["target"], []).append(
                    (start, event["time"], details["operation"], details["id"]))  # fmt: skip
    return spans


def test_fifty_parallel_requests_on_ten_containers(local: Server, http: Http, tiny_root: Path) -> None:
    names = [f"c{index}" for index in range(10)]
    api = http(local, timeout=120)
    launches = [_launch(api, name) for name in names]
    for answer in launches:
        _succeeded(api, answer, timeout=120)
    assert {_state(api, name) for name in names} == {"running"}

    chooser = random.Random(8)
    plan: list[tuple[str, str, str | None]] = []
    for _ in range(50):
        name = chooser.choice(names)
        kind = chooser.choice(["list", "show", "action", "action", "action"])
        action = chooser.choice(["start", "stop", "pause", "resume"])
        plan.append((kind, name, action if kind == "action" else None))
    clients = [http(local, timeout=120) for _ in range(10)]

    def send(index: int) -> tuple[int, str, dict[str, Any] | None]:
        kind, name, action = plan[index]
        client = clients[index % len(clients)]
        if kind == "list":
            answer = client.get("/1.0/instances")
        elif kind == "show":
            answer = client.get(f"/1.0/instances/{name}")
        else:
            body = {"timeout": 30} if action == "stop" else {}
            answer = client.post(f"/1.0/instances/{name}/{action}", json=body)
        return answer.status_code, answer.text[:300], answer.json() if answer.status_code == 202 else None

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(send, range(50)))
    assert time.monotonic() - began < 60, "50 requests took over a minute: the server is stuck"
    for status, text, _ in answers:
        assert status < 500, text
        assert status in (200, 202), text
    operations = [operation for _, _, operation in answers if operation is not None]
    assert len(operations) == sum(1 for kind, _, _ in plan if kind == "action")

    deadline = time.monotonic() + 240
    for operation in operations:
        left = deadline - time.monotonic()
        assert left > 0, "the actions did not all end within 4 minutes: a deadlock?"
        record = api.get(f"/1.0/operations/{operation['id']}/wait", params={"timeout": left}).json()
        assert record["status"] in ENDED, record
        if record["status"] == "failure":  # refused for the state it found, never a bug
            assert "internal error" not in record["error"], record
            assert record["result"]["error"]["error"] in ("StateError", "ConflictError", "BusyError"), record

    spans = _spans(tiny_root)
    records = {record["id"]: record for record in api.get("/1.0/operations").json()}
    outcomes = [records[operation["id"]]["status"] for operation in operations]
    print(f"{len(operations)} actions: {outcomes.count('success')} succeeded, the rest refused for the state")
    assert outcomes.count("success") >= 3, outcomes  # real work, not only refusals
    assert sum(len(mine) for mine in spans.values()) == len(names) + len(operations)  # each seen run
    for name in names:
        mine = sorted(spans.get(name, []))
        for (_, end, action, _), (start, _, following, _) in itertools.pairwise(mine):
            assert end <= start, f"{name}: {action} and {following} overlapped"
        succeeded = [span for span in mine if records[span[3]]["status"] == "success"]
        last = succeeded[-1][2]
        assert _state(api, name) == AFTER[last], (name, [(s[2], records[s[3]]["status"]) for s in mine])


# --- a server killed mid-operation ----------------------------------------------------------------


def test_server_killed_mid_operation(serve: Callable[..., Server], local: Server, http: Http,
                                     tiny_root: Path) -> None:  # fmt: skip
    api = http(local)
    _succeeded(api, _launch(api, "bystander", wait=True))
    bystander_pid = api.get("/1.0/instances/bystander").json()["pid"]
    # A VM boots under TCG in seconds: its launch (waiting for the guest) is still running when
    # the server dies.
    launch = api.post("/1.0/instances", json={"image": "tiny", "name": "vm1", "kind": "vm", "wait": True})
    assert launch.status_code == 202
    operation = launch.json()["id"]
    deadline = time.monotonic() + 60
    while api.get("/1.0/instances/vm1").status_code != 200 or \
            api.get(f"/1.0/operations/{operation}").json()["status"] != "running":  # fmt: skip
        assert time.monotonic() < deadline, "the launch never got going"
        time.sleep(0.05)
    assert api.get(f"/1.0/operations/{operation}").json()["status"] == "running"
    local.kill()

    assert Path(f"/proc/{bystander_pid}").exists()  # the server's death touches no instance
    again = serve(tiny_root)
    api = http(again)
    record = api.get(f"/1.0/operations/{operation}").json()
    assert record["status"] == "failure", record
    assert record["error"].startswith("interrupted"), record
    assert api.get("/1.0/operations", params={"status": "running"}).json() == []
    assert api.get("/1.0/operations", params={"status": "pending"}).json() == []
    shown = api.get("/1.0/instances/bystander").json()
    assert (shown["state"], shown["pid"]) == ("running", bystander_pid)
    done = api.post("/1.0/instances/bystander/exec", json={"command": ["true"]})
    assert done.json()["exit_code"] == 0
    assert _state(api, "vm1") in ("running", "starting", "stopped", "error")
