"""links for real, each test in a network namespace of its own (tests/netns.py): bridges made,
kept and refused; a tap an unprivileged process opens the way QEMU does; veths into a plain
namespace and into one a user namespace owns; nothing left behind by a failure; the networks in
use; forwarding switched on in one namespace only.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Namespace, namespaces, own_netns, without_carrier
from virtkit.errors import ConflictError, NotFoundError, SpecError, ToolError
from virtkit.network import links, netlink

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="makes interfaces and namespaces"),
]

ALIAS = "virtkit:/var/lib/virtkit:network default"
NOBODY = 65534


@pytest.fixture(autouse=True)
def netns(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test in a fresh network namespace, unless it makes its own."""
    if getattr(request.function, "own_namespaces", False):
        yield
        return
    with own_netns():
        yield


def _ip(*args: str) -> Any:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def _links() -> list[dict[str, Any]]:
    return without_carrier(_ip("link"))


def _link(name: str) -> dict[str, Any]:
    return _ip("-d", "link", "show", "dev", name)[0]  # type: ignore[no-any-return]


def _ipv4(name: str) -> list[str]:
    shown = _ip("-4", "addr", "show", "dev", name)  # [] when the device has no IPv4 address
    return [a["local"] for a in shown[0]["addr_info"]] if shown else []


def _names() -> set[str]:
    return {link["ifname"] for link in _ip("link")}


def _inside(pid: int) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "-j", "link"], capture_output=True, text=True, check=True
    ).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def _wait_in_netns(pid: int, path: str) -> int:
    """`pid` once it has entered the namespace at `path` (nsenter/unshare do so after they start)."""
    target = os.stat(path).st_ino if path else None
    own = os.stat("/proc/thread-self/ns/net").st_ino
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        if ino == target or (target is None and ino != own):
            return pid
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not enter its namespace")


@pytest.fixture
def sleeper() -> Iterator[Callable[[list[str], str], int]]:
    """Start `argv` (a process that sits in a namespace), return its pid once it is in there."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], path: str = "") -> int:
        proc = subprocess.Popen(argv)
        started.append(proc)
        return _wait_in_netns(proc.pid, path)

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def ns() -> Iterator[Namespace]:
    with namespaces(1) as (made,):
        yield made


# --- bridges ----------------------------------------------------------------------------------


def test_a_bridge_is_made_as_asked() -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    link = _link("vk-default")
    assert link["linkinfo"]["info_kind"] == "bridge"
    data = link["linkinfo"]["info_data"]
    assert data["stp_state"] == 0 and data["forward_delay"] == 0
    assert link["ifalias"] == ALIAS == links.alias("vk-default")
    assert "UP" in link["flags"]
    addrs = _ip("-4", "addr", "show", "dev", "vk-default")[0]["addr_info"]
    assert [(a["local"], a["prefixlen"], a.get("broadcast")) for a in addrs] == [
        ("10.20.30.1", 24, "10.20.30.255")
    ]
    assert links.exists("vk-default") and not links.exists("vk-other")


def test_ensure_bridge_is_idempotent_and_puts_things_back() -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    before = _link("vk-default")
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    assert _link("vk-default")["ifindex"] == before["ifindex"]
    # drift, as an admin or a reboot might leave it: down, another address, STP on
    subprocess.run(
        ["ip", "link", "set", "vk-default", "down", "type", "bridge", "stp_state", "1"], check=True
    )
    subprocess.run(["ip", "addr", "add", "10.99.0.1/16", "dev", "vk-default"], check=True)
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS, mtu=1400)
    link = _link("vk-default")
    assert "UP" in link["flags"] and link["mtu"] == 1400
    assert link["linkinfo"]["info_data"]["stp_state"] == 0
    assert _ipv4("vk-default") == ["10.20.30.1"]


def test_a_bridge_keeps_its_mac_as_ports_come_and_go(ns: Namespace, sleeper: Any) -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    mac = _link("vk-default")["address"]
    assert int(mac[:2], 16) & 0b11 == 0b10  # locally administered, unicast
    pid = sleeper(ns.argv(["sleep", "60"]), ns.path)
    links.create_veth("vkp0", bridge="vk-default", pid=pid, inner="eth0", mac="52:54:00:00:00:01")
    links.create_tap("vkt0", bridge="vk-default", owner=0)
    assert _link("vk-default")["address"] == mac
    links.delete("vk-default")
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    assert _link("vk-default")["address"] == mac  # the same after a reconcile


def test_a_non_bridge_of_that_name_is_a_conflict() -> None:
    subprocess.run(["ip", "link", "add", "vk-default", "type", "veth", "peer", "name", "vk-peer"], check=True)
    with pytest.raises(ConflictError) as caught:
        links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    assert "vk-default" in caught.value.message and "not a bridge" in caught.value.message
    assert "veth" in caught.value.message and caught.value.hint
    assert "ifalias" not in _link("vk-default")
    assert _ipv4("vk-default") == []


def test_another_owners_bridge_is_a_conflict_and_stays_untouched() -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias="virtkit:/other/root:network default")
    with pytest.raises(ConflictError) as caught:
        links.ensure_bridge("vk-default", "10.50.0.1/24", alias=ALIAS)
    assert "vk-default" in caught.value.message and "/other/root" in caught.value.message
    assert links.alias("vk-default") == "virtkit:/other/root:network default"
    assert _ipv4("vk-default") == ["10.20.30.1"]


def test_a_bridge_in_use_that_virtkit_did_not_make_is_a_conflict() -> None:
    subprocess.run(["ip", "link", "add", "br-user", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "192.168.5.1/24", "dev", "br-user"], check=True)
    with pytest.raises(ConflictError, match="br-user was not made by virtkit"):
        links.ensure_bridge("br-user", "10.20.30.1/24", alias=ALIAS)
    assert "ifalias" not in _link("br-user")


def test_a_vacant_unnamed_bridge_left_by_a_crash_is_taken_over() -> None:
    subprocess.run(["ip", "link", "add", "vk-default", "type", "bridge"], check=True)
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    assert links.alias("vk-default") == ALIAS


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"name": "vk-default-too-long"}, "interface name"),
        ({"name": "vk/x"}, "interface name"),
        ({"address": "10.20.30.1"}, "prefix"),
        ({"address": "10.20.30.0/24"}, "host address"),
        ({"address": "fd00::1/64"}, "IPv4"),
        ({"alias": ""}, "alias"),
        ({"mtu": 20}, "MTU"),
    ],
)
def test_bad_bridge_requests_are_refused_before_anything_is_made(kwargs: dict[str, Any], why: str) -> None:
    before = _links()
    request: dict[str, Any] = {"name": "vk-default", "address": "10.20.30.1/24", "alias": ALIAS} | kwargs
    with pytest.raises(SpecError, match=why):
        links.ensure_bridge(request.pop("name"), request.pop("address"), **request)
    assert _links() == before


def test_delete_removes_and_tolerates_missing() -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    links.delete("vk-default")
    links.delete("vk-default")
    assert not links.exists("vk-default")
    assert links.alias("vk-default") is None


def test_delete_takes_the_companion_found_by_its_name_and_spares_a_namesake() -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    for port in ("vkp0", "vkp1", "vkp2"):
        links.create_tap(port, bridge="vk-default", owner=0)
        links.create_ifb(links.companion_name(port), companion_of=port)
    links.delete("vkp1")
    names = _names()
    assert "vkp1" not in names and links.companion_name("vkp1") not in names
    assert {"vkp0", "vkp2", links.companion_name("vkp0"), links.companion_name("vkp2")} <= names
    # the companion goes even when its interface is gone already (a container's veth)
    subprocess.run(["ip", "link", "del", "vkp2"], check=True)
    links.delete("vkp2")
    assert links.companion_name("vkp2") not in _names()
    # an interface of the companion's name that is not marked as ours is left alone
    namesake = links.companion_name("vkp9")
    subprocess.run(["ip", "link", "add", namesake, "type", "ifb"], check=True)  # unmarked
    links.delete("vkp9")
    assert namesake in _names()
    with pytest.raises(ConflictError):
        links.create_ifb(namesake, companion_of="vkp9")
    assert namesake in _names()


def test_a_companion_must_carry_its_derived_name() -> None:
    with pytest.raises(SpecError, match="is vkifb"):
        links.create_ifb("vkifbwhatever", companion_of="vkp0")
    assert not any(name.startswith("vkifb") for name in _names())


# --- taps -------------------------------------------------------------------------------------

_OPEN_AS = """
import fcntl, os, struct, sys
path, name, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
fd = os.open(path, os.O_RDWR)
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
try:
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
except OSError as e:
    print(e.errno); sys.exit(1)
print("attached")
"""


@pytest.fixture
def tun_node() -> Iterator[str]:
    """A node of the tun device anyone may open. This host's /dev/net/tun is 0600 (no udev to make
    it 0666 as Debian's rules do); the device behind a node is the same, and the ownership check
    this is about happens in TUNSETIFF, not in open."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        node = Path(directory, "tun")
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(10, 200))
        node.chmod(0o666)
        Path(directory).chmod(0o755)
        yield str(node)


def _open_as(node: str, name: str, uid: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-c", _OPEN_AS, node, name, str(uid)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_tap_is_made_for_its_owner_who_opens_it_as_qemu_does(tun_node: str) -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    links.create_tap("vkab12cd34n0", bridge="vk-default", owner=NOBODY, group=NOBODY, mac="fe:54:00:12:34:56")
    link = _link("vkab12cd34n0")
    info = link["linkinfo"]["info_data"]
    assert link["linkinfo"]["info_kind"] == "tun"
    assert info["type"] == "tap" and info["persist"] and info["vnet_hdr"] and not info["multi_queue"]
    assert not info["pi"] and info["user"] == "nobody" and info["group"] == "nogroup"
    assert link["master"] == "vk-default" and "UP" in link["flags"]
    assert link["address"] == "fe:54:00:12:34:56"
    assert links.ports_of("vk-default") == ["vkab12cd34n0"]
    done = _open_as(tun_node, "vkab12cd34n0", NOBODY)
    assert done.returncode == 0 and done.stdout.strip() == "attached", done.stderr
    # and someone else may not (EPERM)
    other = _open_as(tun_node, "vkab12cd34n0", 65533)
    assert other.returncode == 1 and other.stdout.strip() == "1", other.stderr


def test_a_tap_takes_its_bridges_mtu() -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS, mtu=1400)
    links.create_tap("vkt0", bridge="vk-default", owner=0)
    assert _link("vkt0")["mtu"] == 1400 == links.mtu("vkt0")
    assert _link("vk-default")["mtu"] == 1400


def test_a_tap_on_a_missing_bridge_leaves_nothing() -> None:
    before = _links()
    with pytest.raises(NotFoundError) as caught:
        links.create_tap("vkt0", bridge="vk-missing", owner=NOBODY)
    assert "vk-missing" in caught.value.message and caught.value.hint
    assert _links() == before


def test_a_tap_whose_name_is_taken_is_a_conflict_and_the_other_stays() -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    links.create_tap("vkt0", bridge="vk-default", owner=0)
    with pytest.raises(ConflictError, match="vkt0"):
        links.create_tap("vkt0", bridge="vk-default", owner=NOBODY)
    assert _link("vkt0")["linkinfo"]["info_data"]["user"] == "root"


def test_a_tap_that_fails_half_way_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    before = _links()
    real_set = netlink.Netlink.set

    def failing_set(self: netlink.Netlink, index: int, **attrs: object) -> None:
        if "master" in attrs:
            from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

            raise NetlinkError(22, "Invalid argument")
        real_set(self, index, **attrs)

    monkeypatch.setattr(netlink.Netlink, "set", failing_set)
    with pytest.raises(ToolError, match="vkt0"):
        links.create_tap("vkt0", bridge="vk-default", owner=NOBODY)
    assert _links() == before


def test_a_tap_on_something_that_is_not_a_bridge_is_refused() -> None:
    subprocess.run(["ip", "link", "add", "vkv0", "type", "veth", "peer", "name", "vkv1"], check=True)
    before = _names()
    with pytest.raises(ConflictError, match="vkv0 is not a bridge"):
        links.create_tap("vkt0", bridge="vkv0", owner=0)
    assert _names() == before


# --- veths ------------------------------------------------------------------------------------


def test_a_veth_into_a_plain_namespace(ns: Namespace, sleeper: Any) -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    pid = sleeper(ns.argv(["sleep", "60"]), ns.path)
    links.create_veth("vkab12cd34n0", bridge="vk-default", pid=pid, inner="eth0", mac="52:54:00:ab:cd:01")
    host = _link("vkab12cd34n0")
    assert host["master"] == "vk-default" and "UP" in host["flags"]
    assert host["linkinfo"]["info_kind"] == "veth"
    inside = _inside(pid)
    assert set(inside) == {"lo", "eth0"}
    assert inside["eth0"]["address"] == "52:54:00:ab:cd:01"
    assert "UP" not in inside["eth0"]["flags"]  # left for the container to bring up
    assert inside["eth0"]["ifindex"] == host["link_index"]
    assert links.ports_of("vk-default") == ["vkab12cd34n0"]


def test_a_veth_into_a_namespace_a_user_namespace_owns(sleeper: Any) -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    pid = sleeper(["unshare", "--user", "--map-root-user", "--net", "sleep", "60"])
    assert os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    links.create_veth("vkab12cd34n1", bridge="vk-default", pid=pid, inner="eth1", mac="52:54:00:ab:cd:02")
    inside = _inside(pid)
    assert inside["eth1"]["address"] == "52:54:00:ab:cd:02"
    # the container's root can bring it up: it is its namespace's device
    up = subprocess.run(
        ["nsenter", "-t", str(pid), "-U", "-n", "--preserve-credentials", "ip", "link", "set", "eth1", "up"],
        capture_output=True,
        text=True,
    )
    assert up.returncode == 0, up.stderr
    assert "UP" in _inside(pid)["eth1"]["flags"]


def test_a_veth_whose_inner_name_is_taken_leaves_nothing(ns: Namespace, sleeper: Any) -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    pid = sleeper(ns.argv(["sleep", "60"]), ns.path)
    links.create_veth("vkp0", bridge="vk-default", pid=pid, inner="eth0", mac="52:54:00:ab:cd:01")
    before, before_inside = _links(), _inside(pid)
    with pytest.raises(ConflictError) as caught:
        links.create_veth("vkp1", bridge="vk-default", pid=pid, inner="eth0", mac="52:54:00:ab:cd:02")
    assert "eth0" in caught.value.message and str(pid) in caught.value.message
    assert _links() == before
    assert _inside(pid) == before_inside


def test_veth_failures_leave_nothing(ns: Namespace, sleeper: Any) -> None:
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    pid = sleeper(ns.argv(["sleep", "60"]), ns.path)
    before, before_inside = _links(), _inside(pid)
    with pytest.raises(NotFoundError, match="vk-missing"):
        links.create_veth("vkp0", bridge="vk-missing", pid=pid, inner="eth0", mac="52:54:00:ab:cd:01")
    with pytest.raises(ConflictError, match="vk-default"):  # the host end's name is the bridge's
        links.create_veth("vk-default", bridge="vk-default", pid=pid, inner="eth0", mac="52:54:00:ab:cd:01")
    with pytest.raises(SpecError, match="this network namespace"):  # our own: eth0 would land on the host
        links.create_veth("vkp0", bridge="vk-default", pid=os.getpid(), inner="eth0", mac="52:54:00:ab:cd:01")
    with pytest.raises(SpecError, match="MAC"):
        links.create_veth("vkp0", bridge="vk-default", pid=pid, inner="eth0", mac="01:00:5e:00:00:01")
    dead = subprocess.Popen(["true"])
    dead.wait()
    with pytest.raises(NotFoundError, match=str(dead.pid)):
        links.create_veth("vkp0", bridge="vk-default", pid=dead.pid, inner="eth0", mac="52:54:00:ab:cd:01")
    assert _links() == before
    assert _inside(pid) == before_inside


def test_concurrent_veths_into_many_namespaces(sleeper: Any) -> None:
    """Peers are made under their final names inside their namespaces: no temporary name to clash."""
    from concurrent.futures import ThreadPoolExecutor

    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    pids = [sleeper(["unshare", "--net", "sleep", "60"]) for _ in range(8)]

    def make(i: int) -> None:  # a thread made by this one starts in this one's namespace
        links.create_veth(
            f"vkc{i}", bridge="vk-default", pid=pids[i], inner="eth0", mac=f"52:54:00:00:01:{i:02x}"
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(8)))
    assert links.ports_of("vk-default") == sorted(f"vkc{i}" for i in range(8))
    for i, pid in enumerate(pids):
        assert _inside(pid)["eth0"]["address"] == f"52:54:00:00:01:{i:02x}"


# --- the rest ---------------------------------------------------------------------------------


def test_set_master_up_down_and_stats(ns: Namespace, sleeper: Any) -> None:
    links.ensure_bridge("vk-a", "10.20.30.1/24", alias=ALIAS + "a")
    links.ensure_bridge("vk-b", "10.20.31.1/24", alias=ALIAS + "b")
    pid = sleeper(ns.argv(["sleep", "60"]), ns.path)
    links.create_veth("vkp0", bridge="vk-a", pid=pid, inner="eth0", mac="52:54:00:ab:cd:01")
    links.set_master("vkp0", "vk-b")
    assert links.ports_of("vk-a") == [] and links.ports_of("vk-b") == ["vkp0"]
    links.set_master("vkp0", None)
    assert "master" not in _link("vkp0")
    links.down("vkp0")
    assert "UP" not in _link("vkp0")["flags"]
    links.up("vkp0")
    assert "UP" in _link("vkp0")["flags"]
    with pytest.raises(NotFoundError, match="vk-c"):
        links.set_master("vkp0", "vk-c")
    with pytest.raises(NotFoundError, match="nope"):
        links.up("nope")
    ns.run(["ip", "addr", "add", "10.20.30.2/24", "dev", "eth0"], check=True)
    ns.run(["ip", "link", "set", "eth0", "up"], check=True)
    links.set_master("vkp0", "vk-a")
    counters = links.stats("vkp0")
    assert set(counters) == {"rx_bytes", "tx_bytes", "rx_packets", "tx_packets"}
    send = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    send += "for _ in range(5): s.sendto(b'x' * 1000, ('10.20.30.1', 9))"
    ns.run([sys.executable, "-I", "-c", send], check=True)
    after = links.stats("vkp0")
    assert after["rx_packets"] >= counters["rx_packets"] + 5  # from the container
    assert after["rx_bytes"] >= counters["rx_bytes"] + 5 * 1000
    assert after["tx_packets"] >= counters["tx_packets"] + 1  # to it: at least the ARP reply


def test_addresses_in_use_sees_routes_and_addresses() -> None:
    # loopback's address; its routes, and the broadcast and local ones below, are the local table's
    assert [str(n) for n in links.addresses_in_use()] == ["127.0.0.0/8"]
    links.ensure_bridge("vk-default", "10.20.30.1/24", alias=ALIAS)
    subprocess.run(["ip", "addr", "add", "172.31.4.5/30", "dev", "vk-default"], check=True)
    subprocess.run(["ip", "route", "add", "192.168.77.0/24", "via", "10.20.30.9"], check=True)
    subprocess.run(["ip", "route", "add", "10.200.0.0/16", "dev", "vk-default", "table", "100"], check=True)
    subprocess.run(["ip", "route", "add", "blackhole", "10.66.0.0/16"], check=True)
    subprocess.run(["ip", "route", "add", "default", "via", "10.20.30.254"], check=True)
    found = links.addresses_in_use()
    assert [str(n) for n in found] == [
        "10.20.30.0/24", "10.66.0.0/16", "10.200.0.0/16", "127.0.0.0/8", "172.31.4.4/30", "192.168.77.0/24",
    ]  # fmt: skip


def _forwarding() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def test_forwarding_is_enabled_in_this_namespace_only() -> None:
    outside = _forwarding()
    with own_netns():
        links.enable_forwarding()
        links.enable_forwarding()
        assert _forwarding() == "1"
        with own_netns():
            assert _forwarding() == outside  # a sibling namespace starts as the host is
    assert _forwarding() == outside


test_forwarding_is_enabled_in_this_namespace_only.own_namespaces = True  # type: ignore[attr-defined]


def test_names_are_checked_everywhere() -> None:
    for call in (
        lambda: links.exists("a" * 16),
        lambda: links.alias("a b"),
        lambda: links.delete(".."),
        lambda: links.up("x:y"),
        lambda: links.stats(""),
        lambda: links.ports_of("a/b"),
        lambda: links.create_tap("ok", bridge="bad\0", owner=0),
    ):
        with pytest.raises(SpecError, match="interface name"):
            call()
