"""`GET /metrics` of a real `virtkit serve` with real instances: a tiny container on a virtkit
network (the server, the network and the test's own requests in a network namespace of their own,
so nothing touches this machine's networking) over TLS with tokens, and a tiny VM (TCG) over the
Unix socket. Counters are read twice around real work (a busy loop, pings, direct writes, disk
reads) and must be there, positive and growing."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.apiserver import Server, servers  # noqa: F401
from tests.e2e.conftest import VIRTKIT, seed_root, state_root, tiny_template  # noqa: F401
from tests.netns import own_netns
from tests.unit.ops.test_metrics import parse, value

SUBNET, GATEWAY = "10.77.41.0/24", "10.77.41.1"
BUSY = "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"
DIRECT_WRITE = "dd if=/dev/zero of=/w bs=64k count=16 oflag=direct"
DIRECT_READ = "dd if=/dev/vda of=/dev/null bs=64k count=32 iflag=direct"


@pytest.fixture
def root(state_root: Path, tiny_template: Path) -> Path:  # noqa: F811
    seed_root(tiny_template, state_root)
    return state_root


def cli(root: Path, *args: str, timeout: float = 120) -> str:
    done = subprocess.run([str(VIRTKIT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "VIRTKIT_ROOT": str(root)}, check=False)  # fmt: skip
    assert done.returncode == 0, f"virtkit {' '.join(args)}: {done.stderr}"
    return done.stdout


def token(root: Path, name: str, role: str) -> str:
    return cli(root, "token", "create", name, "--role", role).strip()


def http_of(server: Server) -> httpx.Client:
    if server.url.startswith("unix:"):
        return httpx.Client(transport=httpx.HTTPTransport(uds=server.url[5:]), base_url="http://virtkit")
    assert server.cert is not None
    return httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(server.cert)))


Samples = list[tuple[str, dict[str, str], float]]


def scrape(http: httpx.Client, secret: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    response = http.get("/metrics", headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    _meta, samples = parse(response.text)
    return samples


def counter(samples: Samples, family: str, **labels: str) -> float:
    found = value(samples, family, **labels)
    assert found is not None, f"no {family} for {labels}"
    return found


@pytest.fixture
def netns() -> Iterator[None]:
    with own_netns():
        yield


def test_a_running_container_over_tls(
    root: Path, servers: Callable[..., Server], tmp_path: Path, netns: None  # noqa: F811
) -> None:
    server = servers(root, tls=tmp_path / "tls")
    viewer, operator = token(root, "watcher", "viewer"), token(root, "ops", "operator")
    http = http_of(server)
    try:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer vkt_nope"}).status_code == 401
        api = server.client(operator)
        cli(root, "network", "create", "lab", "--type", "isolated", "--subnet", SUBNET)
        try:
            api.launch({"image": "tiny", "name": "c1", "kind": "container", "nics": ["lab"], "wait": True})
            device = api.instance("c1")["nics"][0]["device"]
            ident = {"name": "c1", "kind": "container"}
            first = scrape(http, viewer)
            assert counter(first, "virtkit_instance_state", **ident, state="running") == 1
            assert counter(first, "virtkit_host_instances", state="running") == 1
            available = counter(first, "virtkit_host_memory_available_bytes")
            assert counter(first, "virtkit_host_memory_bytes") > available > 0

            on_disk = os.major(root.stat().st_dev) != 0  # the root on a block device (not tmpfs)
            work = f"{BUSY}; ping -c 3 -i 0.2 -W 1 {GATEWAY}" + (f" && {DIRECT_WRITE}" if on_disk else "")
            done = api.exec("c1", ["sh", "-c", work], timeout=60)
            assert done["exit_code"] == 0, done
            time.sleep(0.2)
            second = scrape(http, operator)  # a higher role reads too

            cpu = [counter(s, "virtkit_instance_cpu_seconds_total", **ident) for s in (first, second)]
            assert 0 < cpu[0] < cpu[1]
            assert counter(second, "virtkit_instance_memory_bytes", **ident) > 0
            nic = {**ident, "device": device}
            for family in ("virtkit_instance_network_receive_bytes_total",
                           "virtkit_instance_network_transmit_bytes_total"):  # fmt: skip
                # three ICMP echoes each way (98 bytes on the wire) at least
                assert counter(second, family, **nic) - (value(first, family, **nic) or 0) >= 3 * 98
            family = "virtkit_instance_disk_write_bytes_total"
            written = [counter(s, family, **ident) for s in (first, second)]
            if on_disk:
                assert written[1] - written[0] >= 16 * 65536  # direct I/O is charged to the container
            assert value(second, "virtkit_instance_disk_read_bytes_total", **ident) is not None
        finally:
            subprocess.run([str(VIRTKIT), "delete", "--force", "c1"], capture_output=True, timeout=60,
                           env={**os.environ, "VIRTKIT_ROOT": str(root)}, check=False)  # fmt: skip
            cli(root, "network", "delete", "lab")
        after = scrape(http, viewer)
        assert value(after, "virtkit_instance_state", **ident, state="running") is None
        assert counter(after, "virtkit_host_instances", state="running") == 0
    finally:
        http.close()


def test_a_running_vm_over_the_unix_socket(root: Path, servers: Callable[..., Server]) -> None:  # noqa: F811
    server = servers(root)
    http = http_of(server)
    api = server.client()
    ident = {"name": "v1", "kind": "vm"}
    try:
        api.launch({"image": "tiny", "name": "v1", "kind": "vm", "wait": True})
        first = scrape(http)  # the local socket: no token
        done = api.exec("v1", ["sh", "-c", f"{BUSY}; {DIRECT_READ}"], timeout=120)
        assert done["exit_code"] == 0, done
        second = scrape(http)
        cpu = [counter(s, "virtkit_instance_cpu_seconds_total", **ident) for s in (first, second)]
        assert 0 < cpu[0] < cpu[1]
        assert counter(second, "virtkit_instance_memory_bytes", **ident) > 0
        read = [counter(s, "virtkit_instance_disk_read_bytes_total", **ident) for s in (first, second)]
        assert read[1] - read[0] >= 32 * 65536
        assert value(second, "virtkit_instance_disk_write_bytes_total", **ident) is not None
        api.action("v1", "stop", force=True)
        stopped = scrape(http)
        assert counter(stopped, "virtkit_instance_state", **ident, state="stopped") == 1
        assert value(stopped, "virtkit_instance_cpu_seconds_total", **ident) is None
    finally:
        http.close()
        subprocess.run([str(VIRTKIT), "delete", "--force", "v1"], capture_output=True, timeout=60,
                       env={**os.environ, "VIRTKIT_ROOT": str(root)}, check=False)  # fmt: skip
