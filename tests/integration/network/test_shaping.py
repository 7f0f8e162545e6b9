"""Rate limits for real: two namespaces stand for two instances, joined through a bridge by veths
(links.create_veth), in a namespace of the test's own. A limit on one instance's host end is
measured with a TCP transfer in each direction (toward the instance: the host end's egress; from
it: its ingress, through the ifb) and must come within 20% of the rate; clearing it gives full
speed back and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.netns import Namespace, namespaces, own_netns, without_carrier
from virtkit.errors import NotFoundError, SpecError
from virtkit.network import links, shaping

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="makes interfaces, namespaces and qdiscs"),
]

SECONDS = 3.0
PORT = 5001

# The receiver counts the bytes of the first SECONDS from the first byte, as iperf reports an
# interval; the sender goes on a second longer, so a loss at its end (and the retransmission
# timeout after it) falls outside the window instead of stretching it.
_RECEIVER = """
import json, socket, sys, time
window = float(sys.argv[2])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(1)
print("ready", flush=True)
conn, _ = server.accept()
total, first = 0, None
while True:
    chunk = conn.recv(1 << 16)
    if not chunk:
        break
    now = time.monotonic()
    first = first or now
    if now - first <= window:
        total += len(chunk)
print(json.dumps({"bytes": total, "seconds": window}), flush=True)
"""
_SENDER = """
import socket, sys, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
chunk, end = b"x" * (1 << 16), time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    conn.sendall(chunk)
conn.close()
"""


@dataclass
class Instance:
    ns: Namespace
    device: str
    ip: str
    process: subprocess.Popen[bytes]  # holds the namespace, as a container's init does


def _python(ns: Namespace, code: str, *args: str, **kwargs: Any) -> Any:
    return ns.popen([sys.executable, "-I", "-c", code, *args], **kwargs)


def measure(src: Instance, dst: Instance, seconds: float = SECONDS) -> float:
    """Mbit/s of TCP payload from `src` to `dst`."""
    receiver = _python(dst.ns, _RECEIVER, str(PORT), str(seconds), stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        sender = [sys.executable, "-I", "-c", _SENDER, dst.ip, str(PORT), str(seconds + 1)]
        src.ns.run(sender, check=True, timeout=60)
        result = json.loads(receiver.stdout.readline())
        receiver.wait(timeout=30)
    finally:
        receiver.kill()
        receiver.wait()
    return float(result["bytes"]) * 8 / float(result["seconds"]) / 1e6


def _ip(*args: str) -> Any:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def _tc(*args: str) -> Any:
    out = subprocess.run(["tc", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def _in_namespace(pid: int, path: str) -> None:
    target = os.stat(path).st_ino
    deadline = time.monotonic() + 5
    while os.stat(f"/proc/{pid}/ns/net").st_ino != target:
        assert time.monotonic() < deadline, "the namespace's process did not enter it"
        time.sleep(0.01)


@pytest.fixture
def pair() -> Iterator[tuple[Instance, Instance]]:
    """Two instances on bridge vk-test, each with eth0 (10.77.0.2, .3) on its veth."""
    with own_netns(), namespaces(2) as spaces:
        links.ensure_bridge("vk-test", "10.77.0.1/24", alias="virtkit:test:network test")
        sleepers = []
        made = []
        try:
            for i, ns in enumerate(spaces):
                sleeper = ns.popen(["sleep", "300"])
                sleepers.append(sleeper)
                _in_namespace(sleeper.pid, ns.path)
                device, ip = f"vkinst{i}n0", f"10.77.0.{i + 2}"
                links.create_veth(
                    device, bridge="vk-test", pid=sleeper.pid, inner="eth0", mac=f"52:54:00:77:00:0{i}"
                )
                ns.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"], check=True)
                ns.run(["ip", "link", "set", "eth0", "up"], check=True)
                made.append(Instance(ns, device, ip, sleeper))
            yield made[0], made[1]
        finally:
            for sleeper in sleepers:
                sleeper.kill()
                sleeper.wait()


def _within(measured: float, rate_mbit: float) -> bool:
    return abs(measured - rate_mbit) <= 0.2 * rate_mbit


@pytest.mark.parametrize("rate", ["10mbit", "50mbit"])
def test_a_limit_holds_both_ways_within_20_percent(pair: tuple[Instance, Instance], rate: str) -> None:
    limited, other = pair
    bits = shaping.parse_rate(rate)
    shaping.limit(limited.device, bits)
    assert shaping.current(limited.device) == bits
    toward = measure(other, limited)
    away = measure(limited, other)
    report = f"{rate}: toward the instance {toward:.2f} Mbit/s, from it {away:.2f} Mbit/s"
    print(report)
    assert _within(toward, bits / 1e6), report
    assert _within(away, bits / 1e6), report
    assert shaping.current(other.device) is None  # the other instance is not limited


def test_clear_gives_full_speed_back_and_leaves_nothing(pair: tuple[Instance, Instance]) -> None:
    limited, other = pair
    links_before, qdiscs_before = without_carrier(_ip("link")), _tc("qdisc", "show", "dev", limited.device)
    shaping.limit(limited.device, 10_000_000)
    assert shaping.ifb_of(limited.device) in {link["ifname"] for link in _ip("link")}
    shaping.clear(limited.device)
    shaping.clear(limited.device)  # nothing to clear is fine
    assert shaping.current(limited.device) is None
    assert without_carrier(_ip("link")) == links_before
    assert _tc("qdisc", "show", "dev", limited.device) == qdiscs_before
    assert _tc("filter", "show", "dev", limited.device, "ingress") == []
    toward, away = measure(other, limited, 1.0), measure(limited, other, 1.0)
    assert toward > 200 and away > 200, f"unlimited: {toward:.0f} and {away:.0f} Mbit/s"


def test_limit_is_idempotent_and_replaces_a_rate(pair: tuple[Instance, Instance]) -> None:
    limited, _ = pair
    shaping.limit(limited.device, 10_000_000)
    shaping.limit(limited.device, 10_000_000)
    shaping.limit(limited.device, 50_000_000)
    assert shaping.current(limited.device) == 50_000_000
    ifb = shaping.ifb_of(limited.device)
    qdiscs = _tc("qdisc", "show", "dev", limited.device)
    assert [q["kind"] for q in qdiscs if q.get("root")] == ["tbf"]
    assert [q["kind"] for q in qdiscs if not q.get("root")] == ["ingress"]
    filters = [
        f
        for f in _tc("filter", "show", "dev", limited.device, "ingress")
        if "actions" in f.get("options", {})
    ]
    assert len(filters) == 1
    assert filters[0]["options"]["actions"][0]["to_dev"] == ifb
    assert [q["options"]["rate"] * 8 for q in _tc("qdisc", "show", "dev", ifb) if q.get("root")] == [
        50_000_000
    ]
    assert sum(1 for link in _ip("link") if link["ifname"].startswith("vkifb")) == 1


def test_a_half_applied_limit_reads_as_none(pair: tuple[Instance, Instance]) -> None:
    limited, _ = pair
    shaping.limit(limited.device, 10_000_000)
    subprocess.run(["tc", "qdisc", "del", "dev", limited.device, "ingress"], check=True)
    assert shaping.current(limited.device) is None
    shaping.limit(limited.device, 10_000_000)
    assert shaping.current(limited.device) == 10_000_000


def test_the_ifb_goes_with_its_device(pair: tuple[Instance, Instance]) -> None:
    first, second = pair
    shaping.limit(first.device, 10_000_000)
    shaping.limit(second.device, 10_000_000)
    links.delete(first.device)  # as a VM's tap is deleted when it stops
    names = {link["ifname"] for link in _ip("link")}
    assert shaping.ifb_of(first.device) not in names and shaping.ifb_of(second.device) in names
    # a container's veth dies with its namespace, without links.delete: the ifb is reaped later
    second.process.kill()
    second.process.wait()
    second.ns.delete()
    deadline = time.monotonic() + 10
    while links.exists(second.device):  # the kernel dismantles a dead namespace in the background
        assert time.monotonic() < deadline, "the veth outlived its namespace"
        time.sleep(0.05)
    assert links.reap_companions() == [shaping.ifb_of(second.device)]
    assert not {link["ifname"] for link in _ip("link")} & {shaping.ifb_of(second.device)}


def test_the_instance_cannot_see_or_undo_its_limit(pair: tuple[Instance, Instance]) -> None:
    limited, _ = pair
    shaping.limit(limited.device, 10_000_000)
    inside = limited.ns.run(["ip", "-j", "link"], check=True)
    assert {link["ifname"] for link in json.loads(inside.stdout)} == {"lo", "eth0"}
    limited.ns.run(["tc", "qdisc", "del", "dev", "eth0", "root"])  # whatever it does to its own side
    limited.ns.run(["tc", "qdisc", "del", "dev", "eth0", "ingress"])
    assert shaping.current(limited.device) == 10_000_000


def test_limit_refuses_what_it_cannot_do(pair: tuple[Instance, Instance]) -> None:
    limited, _ = pair
    before = without_carrier(_ip("link"))
    with pytest.raises(NotFoundError, match="vkmissing"):
        shaping.limit("vkmissing", 10_000_000)
    with pytest.raises(SpecError, match="rate"):
        shaping.limit(limited.device, 10)
    with pytest.raises(SpecError, match="device name"):
        shaping.limit("bad name", 10_000_000)
    assert without_carrier(_ip("link")) == before
    assert shaping.current(limited.device) is None
    shaping.clear("vkmissing")  # a device that is gone has no limit to clear


def test_a_vms_tap_is_limited_the_same_way() -> None:
    """A tap carries no traffic without its QEMU; what is checked is that the same limit goes on."""
    with own_netns():
        links.ensure_bridge("vk-test", "10.77.0.1/24", alias="virtkit:test:network test")
        links.create_tap("vkvm0n0", bridge="vk-test", owner=65534)
        before = _ip("link")
        shaping.limit("vkvm0n0", 25_000_000)
        assert shaping.current("vkvm0n0") == 25_000_000
        links.delete("vkvm0n0")  # a stopped VM's tap: its ifb goes with it
        assert {link["ifname"] for link in _ip("link")} == {link["ifname"] for link in before} - {"vkvm0n0"}
