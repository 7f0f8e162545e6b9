"""Live moves between two hosts of the lab topology (tests/fixtures/hosts.py), run as the source
host runs them (ops/movelive.py in host a's namespace, talking to host b's server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import tiny_template  # noqa: F401  (the fixture)
from tests.fixtures.hosts import Host, Hosts, hosts  # noqa: F401  (the fixture)
from virtkit.errors import VirtkitError
from virtkit.ops.movelive import JOURNAL, LiveMove
from virtkit.store import open_store

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")]


def names(host: Host) -> list[str]:
    return [i["name"] for i in json.loads(host.ok("list", "--json"))]


def state(host: Host, name: str) -> str:
    return str(json.loads(host.ok("show", name, "--json"))["state"])


KILLED_MOVE = """
import os, signal
from pathlib import Path
from virtkit.api.client import Client
from virtkit.ops.movelive import LiveMove
from virtkit.store import open_store

def die(progress):
    if progress.phase == "memory":
        os.kill(os.getpid(), signal.SIGKILL)

client = Client({url!r}, token={token!r}, certificate={cert!r})
LiveMove(Path({root!r}), open_store(Path({root!r})), client, "b").move("v1", progress=die)
"""


@pytest.fixture
def pair(hosts: Hosts) -> Iterator[tuple[Host, Host]]:  # noqa: F811
    a, b = hosts(2)
    a.ok("launch", "tiny", "v1", "--vm", "--wait", timeout=180)
    yield a, b


def move(a: Host, b: Host, name: str = "v1", **options: object) -> dict[str, object]:
    with a.inside():
        store = open_store(a.root)
        try:
            return LiveMove(a.root, store, b.client(), "b").move(name, **options).to_dict()  # type: ignore[arg-type]
        finally:
            store.close()


def test_a_running_vm_moves_live_and_keeps_its_data_and_identity(pair: tuple[Host, Host]) -> None:
    a, b = pair
    a.ok("exec", "v1", "--", "sh", "-c", "head -c 300000 /dev/urandom > /root/data; sync")
    before = a.ok("exec", "v1", "--", "sha256sum", "/root/data")
    uuid = json.loads(a.ok("show", "v1", "--json"))["uuid"]
    accel = json.loads((a.root / "instances" / "v1" / "runtime.json").read_text())["config"]["accel"]
    moved = move(a, b)
    assert names(a) == [] and names(b) == ["v1"]
    assert state(b, "v1") == "running"
    assert b.ok("exec", "v1", "--", "sha256sum", "/root/data") == before
    assert json.loads(b.ok("show", "v1", "--json"))["uuid"] == uuid
    # QEMU's limit (50 ms) is a target it can overshoot on a loaded machine under TCG (78 ms seen
    # with two test workers); benchmarks/migration.py measures it. Here: reported, and not QEMU's
    # default-limit range.
    assert isinstance(moved["downtime_ms"], int) and 0 <= moved["downtime_ms"] < 300
    # Under TCG the RAM is copied paused (drivers/qemu/migration.py says why), and the pause says so.
    assert moved["memory_copy"] == ("paused" if accel == "tcg" else "live")
    phases = moved["phases"]
    assert isinstance(phases, dict) and isinstance(moved["paused_ms"], int)
    if accel == "tcg":
        assert moved["paused_ms"] >= round(1000 * (phases["memory"] + phases["switchover"])) - 1
    assert not (b.root / "instances" / "v1" / "incoming.json").exists()
    b.ok("stop", "v1", timeout=60)
    b.ok("start", "v1", "--wait", timeout=180)  # a later start on b uses its own saved runtime
    assert b.ok("exec", "v1", "--", "sha256sum", "/root/data") == before


def test_a_destination_killed_midway_leaves_the_source_running_and_the_destination_clean(
    pair: tuple[Host, Host],
) -> None:
    a, b = pair
    a.ok("exec", "v1", "--", "sh", "-c", "echo kept > /root/mark")
    assert b.server is not None

    def kill_destination_qemu(_progress: object) -> None:
        for pidfile in b.root.glob("instances/*/pid"):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)

    with pytest.raises(VirtkitError):
        move(a, b, progress=kill_destination_qemu)
    assert state(a, "v1") == "running"
    assert a.ok("exec", "v1", "--", "cat", "/root/mark").strip() == "kept"
    assert not (a.root / "instances" / "v1" / JOURNAL).exists()
    assert names(b) == [] and not list(b.root.glob("instances/*"))


def test_a_move_killed_on_the_source_is_put_back_by_a_rerun(pair: tuple[Host, Host]) -> None:
    a, b = pair
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    script = KILLED_MOVE.format(url=b.url, token=b.token, cert=str(b.cert), root=str(a.root))
    done = subprocess.run(a.ns.argv([sys.executable, "-c", script]), env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert (a.root / "instances" / "v1" / JOURNAL).exists()
    moved = move(a, b)  # the rerun puts back what was left, then moves
    assert moved["recovered"] == "resumed"
    assert names(a) == [] and state(b, "v1") == "running"


def test_refusals_change_nothing(hosts: Hosts) -> None:  # noqa: F811
    a, b = hosts(2)
    a.ok("launch", "tiny", "c1", "--container")
    a.ok("create", "tiny", "v2", "--vm")
    for name, why in (("c1", "container"), ("v2", "running")):
        with pytest.raises(VirtkitError, match=why):
            move(a, b, name)
    with pytest.raises(VirtkitError, match=r"no such|not found|unknown"):
        move(a, b, "nope")
    b.ok("create", "tiny", "v2", "--vm")
    a.ok("start", "v2", "--wait", timeout=180)
    with pytest.raises(VirtkitError, match="exists"):
        move(a, b, "v2")
    assert sorted(names(a)) == ["c1", "v2"] and names(b) == ["v2"]
    assert state(a, "v2") == "running" and state(b, "v2") == "stopped"
    assert not list(a.root.glob(f"instances/*/{JOURNAL}"))


def test_a_vm_on_a_network_keeps_its_mac_address_and_a_running_process(hosts: Hosts) -> None:  # noqa: F811
    a, b = hosts(2)
    for host in (a, b):
        host.ok("network", "create", "lan", "--subnet", "10.88.0.0/24")
    a.ok("launch", "tiny", "v1", "--vm", "--network", "lan", "--wait", timeout=180)
    counter = "n=0; while :; do n=$((n+1)); echo $n > /tmp/n.new; mv /tmp/n.new /tmp/n; sleep 0.05; done"
    a.ok("exec", "v1", "--", "sh", "-c", f"({counter}) >/dev/null 2>&1 & echo $! > /tmp/pid")
    nic = json.loads(a.ok("show", "v1", "--json"))["nics"][0]
    pid = a.ok("exec", "v1", "--", "cat", "/tmp/pid")
    count = int(a.ok("exec", "v1", "--", "sh", "-c", "until [ -s /tmp/n ]; do sleep 0.05; done; cat /tmp/n"))
    move(a, b)
    moved = json.loads(b.ok("show", "v1", "--json"))["nics"][0]
    assert (moved["mac"], moved["ip"], moved["network"]) == (nic["mac"], nic["ip"], "lan")
    assert b.ok("exec", "v1", "--", "cat", "/tmp/pid") == pid  # the same process, never restarted
    assert b.ok("exec", "v1", "--", "sh", "-c", f"kill -0 {pid.strip()} && echo alive").strip() == "alive"
    time.sleep(0.5)
    assert int(b.ok("exec", "v1", "--", "cat", "/tmp/n")) > count
    assert "1 packets received" in b.ok("exec", "v1", "--", "ping", "-c", "1", "-W", "5", "10.88.0.1")
    assert a.ok("network", "show", "lan", "--json")  # the network stays on a, without the VM


def test_a_destination_server_killed_midway_is_cleaned_when_it_restarts(pair: tuple[Host, Host]) -> None:
    a, b = pair
    assert b.server is not None
    server = b.server

    def kill_destination_server(progress: object) -> None:
        if getattr(progress, "phase", "") == "memory" and server.poll() is None:
            server.kill()
            server.wait(10)

    with pytest.raises(VirtkitError):
        move(a, b, progress=kill_destination_server)
    assert state(a, "v1") == "running"  # the guest went on at the source
    assert not (a.root / "instances" / "v1" / JOURNAL).exists()
    assert (b.root / "instances" / "v1" / "incoming.json").exists()  # nobody could tell b
    b.start_server()  # its restart discards what the move left
    assert names(b) == [] and not list(b.root.glob("instances/*"))
    assert not list(b.root.glob("instances/*/pid"))
    moved = move(a, b)  # and the move can be done again
    assert moved["recovered"] is None and state(b, "v1") == "running"


def test_a_guest_dirtying_memory_converges_and_postcopy_works_or_says_why(pair: tuple[Host, Host]) -> None:
    a, b = pair
    a.ok("exec", "v1", "--", "sh", "-c", "dd if=/dev/urandom of=/dev/shm/src bs=1M count=32 2>/dev/null; "
         "(while :; do cp /dev/shm/src /dev/shm/dst; done) >/dev/null 2>&1 &")  # fmt: skip
    try:
        moved = move(a, b, postcopy=True)
    except VirtkitError as exc:  # QEMU's user may not use userfaultfd on this host: then it says so
        assert "post-copy is not possible" in str(exc) and "userfaultfd" in str(exc), exc
        assert state(a, "v1") == "running" and names(b) == []
        moved = move(a, b)
    assert state(b, "v1") == "running" and names(a) == []
    assert isinstance(moved["ram_bytes"], int) and moved["ram_bytes"] > 32 << 20
