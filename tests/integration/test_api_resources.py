"""The API's images, networks, storage, snapshot and copy routes against a real `virtkit serve`.

Every server here runs in a network namespace of its own (`own_netns` around the test: the server
process is forked from the test's thread, which is in it), so networks it makes, its bridges,
dnsmasq and nft rules, never touch this machine's own network. Its state root holds the tiny image
(the session's `tiny_template`). Each family: its happy path, bad input (4xx with a clear message,
nothing changed, no operation made), and who may do what (viewer, operator, admin tokens over TLS).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apiserver import VIRTKIT, Server, servers  # noqa: F401
from tests.e2e.conftest import seed_root, tiny_template  # noqa: F401
from tests.netns import own_netns
from tests.permissions import reachable

WAIT = 180.0


class Api:
    """Raw HTTP to a server: status codes and documents as they are on the wire."""

    def __init__(self, server: Server, token: str | None = None, watcher: Api | None = None) -> None:
        self.watcher = watcher or self  # who counts the operations (a caller without a token cannot)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if server.url.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=server.url[5:])
            self.http = httpx.Client(transport=transport, base_url="http://virtkit", timeout=WAIT)
        else:
            verify = ssl.create_default_context(cafile=str(server.cert))
            self.http = httpx.Client(base_url=server.url, verify=verify, headers=headers, timeout=WAIT)

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
        return self.http.request(method, path, json=body, params=params or None)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200, **params: Any) -> Any:
        response = self.call(method, path, body, **params)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def get(self, path: str) -> Any:
        return self.ok("GET", path)

    def run(self, method: str, path: str, body: Any = None, **params: Any) -> dict[str, Any]:
        """A change that is an operation: 202, then its result once it succeeded."""
        response = self.call(method, path, body, **params)
        assert response.status_code == 202, f"{method} {path}: {response.status_code} {response.text}"
        operation = response.json()
        assert response.headers["Location"] == f"/1.0/operations/{operation['id']}"
        done = self.ok("GET", f"/1.0/operations/{operation['id']}/wait", timeout=WAIT)
        assert done["status"] == "success", f"{method} {path}: {done}"
        assert done["progress"] == 100
        result: dict[str, Any] = done["result"]
        return result

    def refused(self, method: str, path: str, status: int, *words: str, body: Any = None) -> dict[str, Any]:
        """The request is answered `status` at once, with a message holding `words`, and no
        operation is made for it."""
        before = len(self.watcher.get("/1.0/operations"))
        response = self.call(method, path, body)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        document: dict[str, Any] = response.json()
        assert set(document) == {"error", "message", "hint"}, document
        for word in words:
            assert word in document["message"], document
        assert len(self.watcher.get("/1.0/operations")) == before, f"{method} {path} made an operation"
        return document

    def container(self, name: str, *, start: bool = False, **fields: Any) -> dict[str, Any]:
        body = {"image": "tiny", "name": name, "kind": "container", "start": start, **fields}
        return self.run("POST", "/1.0/instances", body)["instance"]  # type: ignore[no-any-return]

    def sh(self, name: str, script: str) -> str:
        done = self.ok("POST", f"/1.0/instances/{name}/exec", {"command": ["sh", "-c", script]})
        assert done["exit_code"] == 0, base64.b64decode(done["stderr"]).decode()
        return base64.b64decode(done["stdout"]).decode()

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def netns() -> Iterator[None]:
    """The test's thread (and every process it starts: the server) in a fresh network namespace."""
    with own_netns():
        yield


@pytest.fixture
def root(tmp_path: Path, tiny_template: Path) -> Path:  # noqa: F811
    made = reachable(tmp_path / "root")
    seed_root(tiny_template, made)
    return made


def _reap(api: Api) -> None:
    """Delete what a test left: instances (clones first), then networks."""
    for instance in api.get("/1.0/instances"):
        response = api.call("DELETE", f"/1.0/instances/{instance['name']}", force=True)
        if response.status_code == 202:
            api.ok("GET", f"/1.0/operations/{response.json()['id']}/wait", timeout=WAIT)
    for network in api.get("/1.0/networks"):
        api.call("DELETE", f"/1.0/networks/{network['name']}")


@pytest.fixture
def api(servers: Callable[..., Server], root: Path, netns: None) -> Iterator[Api]:  # noqa: F811
    """An admin's view of a server on the root's Unix socket, in the test's network namespace."""
    made = Api(servers(root))
    yield made
    _reap(made)
    made.close()


def token(root: Path, name: str, role: str) -> str:
    argv = [str(VIRTKIT), "--root", str(root), "token", "create", name, "--role", role, "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    secret: str = json.loads(done.stdout)["token"]
    return secret


def bridges() -> list[str]:
    shown = subprocess.run(["ip", "-j", "link", "show", "type", "bridge"], capture_output=True, text=True,
                           check=True)  # fmt: skip
    return sorted(link["ifname"] for link in json.loads(shown.stdout or "[]"))


# --- images -------------------------------------------------------------------------------------


def test_images_list_show_alias_delete(api: Api) -> None:
    listed = api.get("/1.0/images")
    assert [image["aliases"] for image in listed] == [["tiny"]]
    tiny = api.get("/1.0/images/tiny")
    assert api.get(f"/1.0/images/{tiny['fingerprint'][:12]}") == tiny
    assert {kind for kind in tiny["kinds"]} == {"vm", "container"}

    named = api.ok("POST", "/1.0/images/tiny/aliases", {"alias": "mini"}, status=201)
    assert named["aliases"] == ["tiny", "mini"]
    assert api.get("/1.0/images/mini")["fingerprint"] == tiny["fingerprint"]
    assert api.ok("DELETE", "/1.0/images/aliases/mini")["aliases"] == ["tiny"]
    api.refused("GET", "/1.0/images/mini", 404, "image 'mini' not found")

    api.container("user")
    api.refused("DELETE", "/1.0/images/tiny", 409, "is used by instance user")
    assert [(i["fingerprint"], i["aliases"]) for i in api.get("/1.0/images")] == [
        (tiny["fingerprint"], ["tiny"])
    ]


def test_images_bad_input_is_refused(api: Api) -> None:
    before = api.get("/1.0/images")
    api.refused("POST", "/1.0/images/tiny/aliases", 400, "invalid image alias 'Mini'", body={"alias": "Mini"})
    api.refused("POST", "/1.0/images/nope/aliases", 404, "image 'nope' not found", body={"alias": "x"})
    api.refused("POST", "/1.0/images/tiny/aliases", 422, "extra", body={"alias": "x", "extra": 1})
    api.refused("DELETE", "/1.0/images/aliases/nope", 404, "image alias 'nope' not found")
    api.refused("DELETE", "/1.0/images/aliases/Bad", 400, "invalid image alias 'Bad'")
    api.refused("DELETE", "/1.0/images/nope", 404, "image 'nope' not found")
    api.refused("GET", "/1.0/images/abcdef012345", 404, "not found")
    api.refused("POST", "/1.0/images/build", 422, "builder", body={"builder": "gentoo"})
    api.refused("POST", "/1.0/images/build", 422, "arch", body={"builder": "tiny", "arch": "mips"})
    api.refused("POST", "/1.0/images/build", 400, "the tiny builder takes no release",
                body={"builder": "tiny", "release": "bookworm"})  # fmt: skip
    api.refused("POST", "/1.0/images/build", 400, "use a Debian codename, not 'stable'",
                body={"builder": "debian", "release": "stable"})  # fmt: skip
    api.refused("POST", "/1.0/images/build", 400, "invalid Debian package name",
                body={"builder": "debian", "packages": ["vim; rm -rf /"]})  # fmt: skip
    assert api.get("/1.0/images") == before


def test_image_build_is_an_operation_with_progress(api: Api, root: Path) -> None:
    old = api.get("/1.0/images/tiny")
    built = api.run("POST", "/1.0/images/build", {"builder": "tiny"})
    [image] = built["images"]
    assert image["aliases"] == ["tiny"] and image["arch"] == "x86_64"
    assert api.get("/1.0/images/tiny")["fingerprint"] == image["fingerprint"]
    if image["fingerprint"] != old["fingerprint"]:  # a rebuild replaces the unused old image
        assert len(api.get("/1.0/images")) == 1
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    progress = [e["details"] for e in events if (e["type"], e["action"]) == ("operation", "progress")]
    messages = [p["message"] for p in progress]
    assert "making the root disk" in messages, messages
    percents = [p["progress"] for p in progress]
    assert percents == sorted(percents) and percents[-1] == 100


# --- networks -----------------------------------------------------------------------------------


def test_network_create_forward_attach_delete(api: Api) -> None:
    made = api.ok("POST", "/1.0/networks", {"name": "web", "subnet": "10.77.1.0/24"}, status=201)
    assert (made["bridge"], made["gateway"], made["type"]) == ("vk-web", "10.77.1.1", "nat")
    assert "vk-web" in bridges()
    [listed] = api.get("/1.0/networks")
    assert listed["name"] == "web" and listed["state"] == "up"
    isolated = api.ok("POST", "/1.0/networks", {"name": "back", "type": "isolated", "dns_domain": "lab.test"},
                      status=201)  # fmt: skip
    assert isolated["domain"] == "lab.test"

    api.container("c1", nics=["web"])
    shown = api.get("/1.0/networks/web")
    assert [a["instance"] for a in shown["instances"]] == ["c1"]
    api.ok(
        "POST", "/1.0/networks/web/forwards", {"host_port": 8080, "instance": "c1", "port": 80}, status=201
    )
    assert api.get("/1.0/networks/web/forwards") == [{"proto": "tcp", "host_port": 8080, "instance": "c1",
                                                       "port": 80}]  # fmt: skip
    api.refused("POST", "/1.0/networks/web/forwards", 409, "already forwarded to c1",
                body={"host_port": 8080, "instance": "c1"})  # fmt: skip
    api.refused("POST", "/1.0/networks/web/forwards", 404, "no NIC on network 'web'",
                body={"host_port": 9090, "instance": "nobody"})  # fmt: skip
    api.refused("POST", "/1.0/networks/back/forwards", 400, "isolated",
                body={"host_port": 9090, "instance": "c1"})  # fmt: skip
    assert api.ok("DELETE", "/1.0/networks/web/forwards/8080")["host_port"] == 8080
    api.refused("DELETE", "/1.0/networks/web/forwards/8080", 404, "no forward of host port 8080/tcp")

    nic = api.ok("POST", "/1.0/networks/back/attach", {"instance": "c1", "ip": "10.0.0.0"}, status=400)
    assert "10.0.0.0" in nic["message"]
    nic = api.ok("POST", "/1.0/networks/back/attach", {"instance": "c1"}, status=201)
    assert nic["network"] == "back" and nic["instance"] == "c1"
    api.refused("DELETE", "/1.0/networks/back", 409, "in use by c1")
    assert api.ok("POST", "/1.0/networks/back/detach", {"instance": "c1"})["network"] == "back"
    api.refused(
        "POST", "/1.0/networks/back/detach", 404, "has no NIC on network 'back'", body={"instance": "c1"}
    )
    assert api.ok("DELETE", "/1.0/networks/back")["name"] == "back"

    api.refused("DELETE", "/1.0/networks/web", 409, "in use by c1")
    api.run("DELETE", "/1.0/instances/c1", force=True)
    assert api.ok("DELETE", "/1.0/networks/web")["name"] == "web"
    assert api.get("/1.0/networks") == [] and "vk-web" not in bridges()


def test_network_bad_input_is_refused_and_changes_nothing(api: Api) -> None:
    api.ok("POST", "/1.0/networks", {"name": "web", "subnet": "10.77.2.0/24"}, status=201)
    before, links = api.get("/1.0/networks"), bridges()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"name": "Web"}, 400, "invalid network name 'Web'"),
        ({"name": "a-very-long-name"}, 400, "15 characters"),
        ({"name": "web"}, 409, "network 'web' already exists"),
        ({"name": "web2", "subnet": "10.77.2.0/24"}, 409, "10.77.2.0/24"),
        ({"name": "web2", "subnet": "8.8.8.0/24"}, 400, "not a private range"),
        ({"name": "web2", "subnet": "10.77.3.1/24"}, 400, "host bits set"),
        ({"name": "web2", "subnet": "nonsense"}, 400, "invalid subnet"),
        ({"name": "web2", "dns_domain": "bad domain"}, 400, "invalid DNS domain"),
        ({"name": "web2", "type": "bridge"}, 422, "type"),
        ({"name": "web2", "mtu": 9000}, 422, "mtu"),
        ({}, 422, "name"),
    ]
    for body, status, words in cases:
        api.refused("POST", "/1.0/networks", status, words, body=body)
    api.refused("GET", "/1.0/networks/nope", 404, "network 'nope' not found")
    api.refused("DELETE", "/1.0/networks/nope", 404, "network 'nope' not found")
    api.refused("DELETE", "/1.0/networks/web/forwards/70000", 422, "host_port")
    api.refused(
        "POST", "/1.0/networks/web/forwards", 422, "host_port", body={"host_port": 0, "instance": "c1"}
    )
    api.refused("POST", "/1.0/networks/web/forwards", 400, "invalid instance name",
                body={"host_port": 80, "instance": "C1"})  # fmt: skip
    api.refused(
        "POST", "/1.0/networks/web/attach", 404, "instance 'nope' not found", body={"instance": "nope"}
    )
    api.refused("POST", "/1.0/networks/web/attach", 400, "invalid rate",
                body={"instance": "nope", "limit": "fast"})  # fmt: skip
    api.refused("POST", "/1.0/networks/nope/detach", 404, "instance 'c9' not found", body={"instance": "c9"})
    assert api.get("/1.0/networks") == before and bridges() == links


# --- storage ------------------------------------------------------------------------------------


def test_pool_create_list_delete(api: Api, tmp_path: Path) -> None:
    place = tmp_path / "fast"
    made = api.ok("POST", "/1.0/storage-pools", {"name": "fast", "path": str(place)}, status=201)
    assert (made["name"], made["path"], made["driver"]) == ("fast", str(place), "dir")
    assert sorted(p["name"] for p in api.get("/1.0/storage-pools")) == ["default", "fast"]
    assert api.get("/1.0/storage-pools/fast")["state"] == "ok"
    api.ok("POST", "/1.0/storage-pools/fast/volumes", {"name": "v", "size": "1MiB"}, status=201)
    api.refused("DELETE", "/1.0/storage-pools/fast", 409, "holds 1 volume(s): v")
    api.ok("DELETE", "/1.0/storage-pools/fast/volumes/v")
    assert api.ok("DELETE", "/1.0/storage-pools/fast")["name"] == "fast"
    assert [p["name"] for p in api.get("/1.0/storage-pools")] == ["default"]
    assert not place.exists()


def test_pool_bad_input_is_refused(api: Api, tmp_path: Path) -> None:
    before = api.get("/1.0/storage-pools")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"name": "Fast"}, 400, "invalid pool name 'Fast'"),
        ({"name": "default"}, 409, "pool 'default' already exists"),
        ({"name": "fast", "path": "relative/dir"}, 400, "relative/dir"),
        ({"name": "fast", "path": str(tmp_path / "full")}, 400, "full"),
        ({"name": "fast", "driver": "zfs"}, 422, "driver"),
    ]
    for body, status, words in cases:
        api.refused("POST", "/1.0/storage-pools", status, words, body=body)
    api.refused("DELETE", "/1.0/storage-pools/default", 409, "the default pool cannot be deleted")
    api.refused("DELETE", "/1.0/storage-pools/nope", 404, "pool 'nope' not found")
    api.refused("GET", "/1.0/storage-pools/nope", 404, "pool 'nope' not found")
    assert [p["name"] for p in api.get("/1.0/storage-pools")] == [p["name"] for p in before]
    assert (tmp_path / "full" / "file").read_text() == "x"


def test_volume_create_resize_attach_detach_delete(api: Api) -> None:
    pool = "/1.0/storage-pools/default/volumes"
    disk = api.ok("POST", pool, {"name": "disk", "size": "1GiB", "limits": {"limits.read_iops": "500"}},
                  status=201)  # fmt: skip
    assert (disk["type"], disk["size"], disk["config"]) == ("block", 1 << 30, {"limits.read_iops": "500"})
    data = api.ok("POST", pool, {"name": "data", "size": "64MiB", "type": "filesystem"}, status=201)
    assert data["format"] == "dir"
    assert sorted(v["name"] for v in api.get(pool)) == ["data", "disk"]
    assert sorted(v["name"] for v in api.get("/1.0/volumes")) == ["data", "disk"]
    shown = api.get(f"{pool}/disk")
    assert shown["limits"] == {"limits.read_iops": "500"} and Path(shown["path"]).is_file()

    assert api.ok("POST", f"{pool}/disk/resize", {"size": "2GiB"})["size"] == 2 << 30
    api.refused("POST", f"{pool}/disk/resize", 400, "cuts off", body={"size": "1GiB"})
    assert api.ok("POST", f"{pool}/disk/resize", {"size": "1GiB", "force": True})["size"] == 1 << 30
    changed = api.ok(
        "PATCH", f"{pool}/disk", {"limits": {"limits.read_iops": None, "limits.write_bps": "50MiB"}}
    )
    assert changed["config"] == {"limits.write_bps": str(50 << 20)}

    api.container("c1")
    attached = api.ok("POST", f"{pool}/data/attach", {"instance": "c1", "path": "/mnt/data"}, status=201)
    assert (attached["instance"], attached["path"], attached["live"]) == ("c1", "/mnt/data", False)
    assert api.get(f"{pool}/data")["attached_to"] == "c1"
    assert [v["name"] for v in api.get("/1.0/instances/c1")["volumes"]] == ["data"]
    api.refused("DELETE", f"{pool}/data", 409, "attached")
    api.refused(
        "POST", f"{pool}/disk/attach", 400, "block volume", body={"instance": "c1", "path": "/mnt/disk"}
    )
    assert api.ok("POST", f"{pool}/data/detach", {"instance": "c1"})["instance"] == "c1"
    assert api.get(f"{pool}/data")["attached_to"] is None
    api.refused("POST", f"{pool}/data/detach", 409, "not attached to c1", body={"instance": "c1"})

    for name in ("data", "disk"):
        assert api.ok("DELETE", f"{pool}/{name}")["name"] == name
    assert api.get("/1.0/volumes") == []


def test_volume_bad_input_is_refused_and_changes_nothing(api: Api) -> None:
    pool = "/1.0/storage-pools/default/volumes"
    api.ok("POST", pool, {"name": "disk", "size": "1GiB"}, status=201)
    api.container("c1")
    before = api.get("/1.0/volumes")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"name": "Disk"}, 400, "invalid volume name 'Disk'"),
        ({"name": "disk"}, 409, "volume 'disk' already exists"),
        ({"name": "v", "size": "12 potatoes"}, 400, "invalid volume size '12 potatoes'"),
        ({"name": "v", "size": "100EiB"}, 400, "volume size"),
        ({"name": "v", "size": -5}, 400, "volume size"),
        ({"name": "v", "type": "tape"}, 422, "type"),
        ({"name": "v", "limits": {"limits.speed": "1"}}, 422, "limits"),
        ({"name": "v", "limits": {"limits.read_iops": "lots"}}, 400, "limits.read_iops"),
    ]
    for body, status, words in cases:
        api.refused("POST", pool, status, words, body=body)
    api.refused("POST", "/1.0/storage-pools/nope/volumes", 404, "pool 'nope' not found", body={"name": "v"})
    api.refused("GET", f"{pool}/nope", 404, "volume")
    api.refused("DELETE", f"{pool}/nope", 404, "volume")
    api.refused("POST", f"{pool}/disk/resize", 400, "invalid volume size", body={"size": "huge"})
    api.refused("POST", f"{pool}/nope/resize", 404, "volume", body={"size": "2GiB"})
    api.refused("PATCH", f"{pool}/disk", 422, "limits", body={"limits": {}})
    api.refused(
        "POST", f"{pool}/disk/attach", 400, "must be absolute", body={"instance": "c1", "path": "mnt"}
    )
    api.refused("POST", f"{pool}/disk/attach", 400, "kernel's", body={"instance": "c1", "path": "/proc/x"})
    api.refused("POST", f"{pool}/disk/attach", 404, "instance 'nope' not found", body={"instance": "nope"})
    api.refused("POST", f"{pool}/disk/detach", 400, "invalid instance name", body={"instance": "C1"})
    assert api.get("/1.0/volumes") == before
    assert api.get("/1.0/instances/c1")["volumes"] == []
    api.ok("DELETE", f"{pool}/disk")


# --- snapshots ----------------------------------------------------------------------------------


def test_snapshot_create_list_restore_delete(api: Api) -> None:
    api.container("c1", start=True)
    api.sh("c1", "echo one > /root/file")
    api.run("POST", "/1.0/instances/c1/stop", {"force": True})

    taken = api.run("POST", "/1.0/instances/c1/snapshots", {"name": "s1", "expiry": "7d"})
    assert taken["snapshot"]["name"] == "s1" and taken["snapshot"]["live"] is False
    assert taken["snapshot"]["expires_at"] is not None
    assert api.run("POST", "/1.0/instances/c1/snapshots")["snapshot"]["name"] == "snap0"
    assert [s["name"] for s in api.get("/1.0/instances/c1/snapshots")] == ["s1", "snap0"]
    shown = api.get("/1.0/instances/c1/snapshots/s1")
    assert shown["kind"] == "container" and shown["instance"] == "c1"

    api.run("POST", "/1.0/instances/c1/start")
    api.sh("c1", "echo two > /root/file")
    restored = api.run("POST", "/1.0/instances/c1/snapshots/s1/restore", {"wait": True})
    assert (restored["was"], restored["restarted"], restored["resumed"]) == ("running", True, False)
    assert api.sh("c1", "cat /root/file") == "one\n"
    api.refused("POST", "/1.0/instances/c1/copy", 409, "it can be copied only stopped", body={"target": "c2"})
    api.refused("POST", "/1.0/instances/c1/publish", 409, "published only stopped")

    assert api.run("DELETE", "/1.0/instances/c1/snapshots/snap0")["snapshot"]["name"] == "snap0"
    assert [s["name"] for s in api.get("/1.0/instances/c1/snapshots")] == ["s1"]
    api.run("DELETE", "/1.0/instances/c1/snapshots/s1")
    assert api.get("/1.0/instances/c1/snapshots") == []


def test_snapshot_bad_input_is_refused(api: Api) -> None:
    api.container("c1")
    api.run("POST", "/1.0/instances/c1/snapshots", {"name": "s1"})
    snaps = "/1.0/instances/c1/snapshots"
    api.refused("POST", snaps, 400, "invalid snapshot name 'S1'", body={"name": "S1"})
    api.refused("POST", snaps, 409, "snapshot 's1' of instance 'c1' already exists", body={"name": "s1"})
    api.refused("POST", snaps, 409, "stateful snapshots of containers are not supported",
                body={"name": "s2", "stateful": True})  # fmt: skip
    api.refused("POST", snaps, 400, "invalid expiry", body={"name": "s2", "expiry": "soon"})
    api.refused("POST", snaps, 400, "invalid expiry", body={"name": "s2", "expiry": 0})
    api.refused("POST", snaps, 422, "when", body={"name": "s2", "when": "now"})
    api.refused("POST", "/1.0/instances/nope/snapshots", 404, "instance 'nope' not found")
    api.refused("POST", "/1.0/instances/Bad/snapshots", 400, "invalid instance name 'Bad'")
    api.refused("GET", "/1.0/instances/nope/snapshots", 404, "instance 'nope' not found")
    api.refused("GET", f"{snaps}/nope", 404, "nope")
    api.refused("POST", f"{snaps}/nope/restore", 404, "nope")
    api.refused("POST", f"{snaps}/s1/restore", 422, "wait", body={"wait": "later"})
    api.refused("DELETE", f"{snaps}/nope", 404, "nope")
    api.refused("DELETE", f"{snaps}/Bad", 400, "invalid snapshot name 'Bad'")
    assert [s["name"] for s in api.get(snaps)] == ["s1"]


# --- copies -------------------------------------------------------------------------------------


def test_copy_linked_and_full_and_publish(api: Api) -> None:
    api.container("c1", start=True)
    api.sh("c1", "echo mine > /root/file")
    api.run("POST", "/1.0/instances/c1/stop", {"force": True})
    linked = api.run("POST", "/1.0/instances/c1/copy", {"target": "c2"})
    assert linked["mode"] == "linked" and linked["instance"]["name"] == "c2" and linked["layers"]
    source = api.get("/1.0/instances/c1")
    clone = api.get("/1.0/instances/c2")
    assert clone["uuid"] != source["uuid"] and clone["state"] == "stopped"
    full = api.run("POST", "/1.0/instances/c1/copy", {"target": "c3", "full": True})
    assert full["mode"] == "full" and full["layers"] == []

    published = api.run("POST", "/1.0/instances/c3/publish", {"alias": "c3-image"})
    assert published["image"]["aliases"] == ["c3-image"]
    assert api.get("/1.0/images/c3-image")["fingerprint"] == published["image"]["fingerprint"]
    assert "container" in published["image"]["kinds"]
    assert api.ok("DELETE", "/1.0/images/c3-image")["fingerprint"] == published["image"]["fingerprint"]
    api.refused("GET", "/1.0/images/c3-image", 404, "image 'c3-image' not found")
    assert api.run("POST", "/1.0/instances/c2/flatten")["instance"]["layers"] == []


def test_copy_and_publish_bad_input_is_refused(api: Api) -> None:
    api.container("c1")
    api.container("c2")
    before = api.get("/1.0/instances")
    images = api.get("/1.0/images")
    copy = "/1.0/instances/c1/copy"
    api.refused("POST", copy, 409, "instance 'c2' already exists", body={"target": "c2"})
    api.refused("POST", copy, 409, "cannot copy c1 onto itself", body={"target": "c1"})
    api.refused("POST", copy, 400, "invalid new instance name 'C3'", body={"target": "C3"})
    api.refused("POST", copy, 404, "nope", body={"target": "c3", "snapshot": "nope"})
    api.refused("POST", copy, 400, "invalid snapshot name", body={"target": "c3", "snapshot": "Nope"})
    api.refused("POST", copy, 422, "target", body={})
    api.refused("POST", copy, 422, "deep", body={"target": "c3", "deep": True})
    api.refused("POST", "/1.0/instances/nope/copy", 404, "instance 'nope' not found", body={"target": "c3"})
    publish = "/1.0/instances/c1/publish"
    api.refused("POST", publish, 409, "image alias 'tiny' is already", body={"alias": "tiny"})
    api.refused("POST", publish, 400, "invalid image alias 'Pub'", body={"alias": "Pub"})
    api.refused("POST", publish, 404, "nope", body={"snapshot": "nope"})
    api.refused("POST", "/1.0/instances/nope/publish", 404, "instance 'nope' not found")
    api.refused("POST", "/1.0/instances/c1/flatten", 409, "rests on no layer")
    assert api.get("/1.0/instances") == before and api.get("/1.0/images") == images


# --- roles --------------------------------------------------------------------------------------


def test_roles_viewer_reads_operator_acts_admin_configures(
    servers: Callable[..., Server],  # noqa: F811
    root: Path,
    tmp_path: Path,
    netns: None,
) -> None:
    server = servers(root, tls=tmp_path / "tls")
    admin = Api(server, token(root, "admin", "admin"))
    operator, viewer = (Api(server, token(root, role, role), admin) for role in ("operator", "viewer"))
    nobody = Api(server, None, admin)
    try:
        admin.container("c1")
        reads = ["/1.0/images", "/1.0/images/tiny", "/1.0/networks", "/1.0/storage-pools", "/1.0/volumes",
                 "/1.0/storage-pools/default", "/1.0/instances/c1/snapshots"]  # fmt: skip
        for path in reads:
            for who in (viewer, operator, admin):
                who.get(path)

        vol = "/1.0/storage-pools/default/volumes"
        changes: list[tuple[str, str, Any]] = [
            ("POST", "/1.0/images/tiny/aliases", {"alias": "mini"}),
            ("DELETE", "/1.0/images/tiny", None),
            ("POST", "/1.0/images/build", {"builder": "tiny"}),
            ("POST", vol, {"name": "v", "size": "1MiB"}),
            ("POST", "/1.0/instances/c1/snapshots", {"name": "s1"}),
            ("POST", "/1.0/instances/c1/copy", {"target": "c2"}),
            ("POST", "/1.0/instances/c1/publish", None),
            ("POST", "/1.0/networks/web/attach", {"instance": "c1"}),
        ]
        admin_only: list[tuple[str, str, Any]] = [
            ("POST", "/1.0/networks", {"name": "web"}),
            ("DELETE", "/1.0/networks/web", None),
            ("POST", "/1.0/networks/reconcile", None),
            ("POST", "/1.0/networks/web/forwards", {"host_port": 80, "instance": "c1"}),
            ("DELETE", "/1.0/networks/web/forwards/80", None),
            ("POST", "/1.0/storage-pools", {"name": "fast"}),
            ("DELETE", "/1.0/storage-pools/default", None),
        ]
        for method, path, body in changes + admin_only:
            viewer.refused(method, path, 403, "has role viewer", body=body)
        # without a token: 401 (a sample: past 10 failures in a minute the address is refused 429)
        for method, path, body in [("GET", reads[0], None), changes[0], changes[4], admin_only[0]]:
            nobody.refused(method, path, 401, "a valid API token is required", body=body)
        for method, path, body in admin_only:
            operator.refused(method, path, 403, "has role operator; this needs admin", body=body)
        assert admin.get("/1.0/networks") == [] and bridges() == []
        assert [p["name"] for p in admin.get("/1.0/storage-pools")] == ["default"]
        assert admin.get("/1.0/volumes") == [] and admin.get("/1.0/instances/c1/snapshots") == []
        assert admin.get("/1.0/images/tiny")["aliases"] == ["tiny"]

        # what the operator may do, it does
        operator.ok("POST", vol, {"name": "v", "size": "1MiB"}, status=201)
        operator.ok("DELETE", f"{vol}/v")
        operator.ok("POST", "/1.0/images/tiny/aliases", {"alias": "mini"}, status=201)
        operator.ok("DELETE", "/1.0/images/aliases/mini")
        operator.run("POST", "/1.0/instances/c1/snapshots", {"name": "s1"})
        operator.run("DELETE", "/1.0/instances/c1/snapshots/s1")
        made = admin.ok("POST", "/1.0/storage-pools", {"name": "fast"}, status=201)
        assert made["name"] == "fast"
        admin.ok("DELETE", "/1.0/storage-pools/fast")
    finally:
        _reap(admin)
        for who in (admin, operator, viewer, nobody):
            who.close()
