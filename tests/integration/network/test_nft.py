"""The virtkit firewall (`inet virtkit` and `bridge virtkit`) proven with real traffic, each test in
its own network namespace.

The test's namespace (`own_netns`) is the host. On it: three bridges with their gateway addresses
(vk-a and vk-b are nat networks, vk-c is isolated), guests as named namespaces joined to them by
veth pairs (the host end is the instance port), and an "internet" namespace behind a veth
(192.0.2.0/24, a documentation range) that routes 10.20.0.0/16 back to the host, so that only our
rules, never a missing route, decide what gets through. Every guest, the internet and the host run
a small TCP+UDP echo server that answers with its own name and the address it saw.

Layer-2 anti-spoofing is proven with raw Ethernet frames a guest writes itself (AF_PACKET), seen
by a sniffer in a peer or read back from the peers' neighbour tables.

Negative checks wait for their timeout, so probes run concurrently: a test costs about one timeout
per round of checks. Several tests first show the traffic passing without our table, so that a
failure afterwards is our rules' doing.
"""

from __future__ import annotations

import ipaddress
import json
import select
import struct
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from tests.netns import Namespace, own_netns
from virtkit.errors import ToolError
from virtkit.network import nft, nftforeign
from virtkit.network.nft import ForwardRules, NetRules, PortRules

pytestmark = pytest.mark.root

PYTHON = "/usr/bin/python3"
PORT = 7000  # every echo server listens here, TCP and UDP
DISCARD = 9  # no one listens here: a raw frame sent to it gets no answer
PROBE_TIMEOUT = 1.0  # how long a probe that must fail waits
PASS_TIMEOUT = 5.0  # one that must pass answers at once, but may need ARP first on a busy host
INTERNET = "192.0.2.2"
UPLINK = "192.0.2.1"  # the host's address towards the internet

# Answers every TCP connection and UDP datagram with "NAME PROTO SEEN-SOURCE-ADDRESS".
SERVER = r"""
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", port))
tcp.listen(64)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", port))
def serve_tcp():
    while True:
        conn, peer = tcp.accept()
        conn.sendall(f"{name} tcp {peer[0]}".encode())
        conn.close()
threading.Thread(target=serve_tcp, daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = udp.recvfrom(2048)
    udp.sendto(f"{name} udp {peer[0]}".encode(), peer)
"""

# One TCP connection or UDP exchange; prints the answer, or exits 1.
CLIENT = r"""
import socket, sys
proto, ip, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(timeout)
try:
    if proto == "tcp":
        s.connect((ip, port))
        print(s.recv(200).decode())
    else:
        s.sendto(b"?", (ip, port))
        print(s.recvfrom(200)[0].decode())
except OSError as exc:
    print(f"failed: {exc}")
    sys.exit(1)
"""

# A DHCP-like datagram from 0.0.0.0 (the interface has no address), to 255.255.255.255.
UNSPECIFIED_SENDER = r"""
import socket, sys
sport, dport = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.bind(("0.0.0.0", sport))
s.sendto(b"discover", ("255.255.255.255", dport))
"""

# Receives one datagram on a port and prints its source; exits 1 after the timeout.
RECEIVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    data, peer = s.recvfrom(200)
    print(f"{data.decode()} from {peer[0]}:{peer[1]}")
except OSError:
    sys.exit(1)
"""


# Sends raw Ethernet frames (hex, one per argument) out of eth0.
FRAMES = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for frame in sys.argv[1:]:
    s.send(bytes.fromhex(frame))
"""

# Prints one 0/1 per marker (hex): whether a frame containing it arrived on eth0 within the timeout
# counted from the line "sent" on stdin (a sender that is slow to start on a busy host is not a drop).
SNIFFER = r"""
import select, socket, sys, time
timeout, markers = float(sys.argv[1]), [bytes.fromhex(m) for m in sys.argv[2:]]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0))
print("ready", flush=True)
seen, watched = set(), [s, sys.stdin]
end = time.monotonic() + 60
while len(seen) < len(markers) and (left := end - time.monotonic()) > 0:
    readable = select.select(watched, [], [], left)[0]
    if sys.stdin in readable:
        sys.stdin.readline()
        watched.remove(sys.stdin)
        end = min(end, time.monotonic() + timeout)
    if s in readable:
        frame = s.recv(65535)
        seen.update(i for i, m in enumerate(markers) if m in frame)
print(" ".join("1" if i in seen else "0" for i in range(len(markers))))
"""


def host_run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """A command in the test's namespace (the host)."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)


@dataclass
class Guest:
    name: str
    ns: Namespace
    port: PortRules


@dataclass
class Network:
    rules: NetRules
    guests: list[Guest] = field(default_factory=list)


class Lab:
    """The topology of the module docstring; `apply` loads our table for it."""

    def __init__(self) -> None:
        self.namespaces: list[Namespace] = []
        self.servers: list[subprocess.Popen[bytes]] = []
        self.nets = {
            "vk-a": Network(NetRules("alpha", "vk-a", "10.20.30.0/24", "10.20.30.1", True)),
            "vk-b": Network(NetRules("beta", "vk-b", "10.20.31.0/24", "10.20.31.1", True)),
            "vk-c": Network(NetRules("gamma", "vk-c", "10.20.32.0/24", "10.20.32.1", False)),
        }
        self.guests: dict[str, Guest] = {}

    def build(self) -> None:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:  # this thread's namespace only
            f.write("1\n")
        for net in self.nets.values():
            r = net.rules
            prefix = r.subnet.split("/")[1]
            host_run(["ip", "link", "add", r.bridge, "type", "bridge"])
            host_run(["ip", "addr", "add", f"{r.gateway}/{prefix}", "dev", r.bridge])
            host_run(["ip", "link", "set", r.bridge, "up"])
        self._guest("a1", "vk-a", 5, allow_host=False)
        self._guest("a2", "vk-a", 6, allow_host=True)
        self._guest("b1", "vk-b", 5, allow_host=False)
        self._guest("c1", "vk-c", 5, allow_host=False)
        self.internet = self._namespace()
        host_run(
            [
                "ip",
                "link",
                "add",
                "uplink",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.internet.name,
            ]
        )
        host_run(["ip", "addr", "add", f"{UPLINK}/24", "dev", "uplink"])
        host_run(["ip", "link", "set", "uplink", "up"])
        for argv in (
            ["ip", "addr", "add", f"{INTERNET}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "route", "add", "10.20.0.0/16", "via", UPLINK],
        ):
            self.internet.run(argv, check=True)
        self.serve(self.internet, "internet")
        self.serve(None, "host")
        self.serve(None, "dns", 53)
        for guest in self.guests.values():
            self.serve(guest.ns, guest.name)

    def _namespace(self) -> Namespace:
        ns = Namespace("vktnft")
        self.namespaces.append(ns)
        return ns

    def port(self, name: str, bridge: str, host: int, *, allow_host: bool) -> PortRules:
        ip = self.nets[bridge].rules.gateway.rsplit(".", 1)[0] + f".{host}"
        mac = f"52:54:00:{int(bridge[-1], 16):02x}:00:{host:02x}"
        return PortRules(f"vkp-{name}", bridge, mac, ip, allow_host)

    def _guest(self, name: str, bridge: str, host: int, *, allow_host: bool) -> None:
        net = self.nets[bridge]
        port = self.port(name, bridge, host, allow_host=allow_host)
        ip, mac = port.ip, port.mac
        guest = Guest(name, self._namespace(), port)
        host_run(
            ["ip", "link", "add", port.device, "type", "veth", "peer", "name", "eth0", "netns", guest.ns.name]
        )
        host_run(["ip", "link", "set", port.device, "master", bridge, "up"])
        for argv in (
            ["ip", "link", "set", "eth0", "address", mac],
            ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "route", "add", "default", "via", net.rules.gateway],
        ):
            guest.ns.run(argv, check=True)
        net.guests.append(guest)
        self.guests[name] = guest

    def serve(self, ns: Namespace | None, name: str, port: int = PORT) -> None:
        argv = [PYTHON, "-c", SERVER, name, str(port)]
        proc = start(ns, argv)
        self.servers.append(proc)
        wait_ready(proc, f"echo server {name}")

    def describe(
        self, forwards: Sequence[ForwardRules] = ()
    ) -> tuple[list[NetRules], list[PortRules], list[ForwardRules]]:
        nets = [n.rules for n in self.nets.values()]
        return nets, [g.port for g in self.guests.values()], list(forwards)

    def apply(self, forwards: Sequence[ForwardRules] = ()) -> None:
        nft.apply(nft.render(*self.describe(forwards)))

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for ns in self.namespaces:
            ns.delete()


def start(ns: Namespace | None, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    if ns is None:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        proc.kill()
        raise AssertionError(f"{what} did not start: {line!r}")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with own_netns():
        made = Lab()
        try:
            made.build()
            yield made
        finally:
            made.close()


# ---------------------------------------------------------------- probes, run concurrently


@dataclass(frozen=True)
class Probe:
    source: Guest | Namespace | None  # None: the host
    proto: str  # icmp, tcp, udp
    ip: str
    port: int = PORT

    def argv(self, timeout: float) -> list[str]:
        if self.proto == "icmp":
            return ["busybox", "ping", "-c1", f"-W{timeout:g}", self.ip]
        return [PYTHON, "-c", CLIENT, self.proto, self.ip, str(self.port), str(timeout)]

    def __str__(self) -> str:
        src = self.source
        name = "host" if src is None else src.name if isinstance(src, Guest) else "internet"
        return f"{name} -> {self.proto} {self.ip}" + ("" if self.proto == "icmp" else f":{self.port}")


def run_probes(probes: Sequence[Probe], passing: int = 0) -> list[str | None]:
    """Each probe's answer (the echo server's line, "pong" for ICMP), None when it failed; the
    first `passing` ones are expected to pass, so they may wait longer (PASS_TIMEOUT)."""
    procs = []
    for index, p in enumerate(probes):
        ns = p.source.ns if isinstance(p.source, Guest) else p.source
        procs.append(start(ns, p.argv(PASS_TIMEOUT if index < passing else PROBE_TIMEOUT)))
    answers: list[str | None] = []
    for p, proc in zip(probes, procs, strict=True):
        out, _ = proc.communicate(timeout=PASS_TIMEOUT + 10)
        ok = proc.returncode == 0
        answers.append(("pong" if p.proto == "icmp" else out.decode().strip()) if ok else None)
    return answers


def assert_reach(passes: Sequence[Probe] = (), fails: Sequence[Probe] = ()) -> list[str | None]:
    """Assert that every probe in `passes` gets an answer and none in `fails` does; return the answers."""
    answers = run_probes([*passes, *fails], passing=len(passes))
    wrong = [f"{p} should pass" for p, a in zip(passes, answers, strict=False) if a is None]
    wrong += [f"{p} should fail, got {a!r}" for p, a in zip(fails, answers[len(passes) :], strict=True) if a]
    assert not wrong, "; ".join(wrong)
    return answers[: len(passes)]


def every(source: Guest | Namespace | None, ip: str, port: int = PORT) -> list[Probe]:
    return [Probe(source, proto, ip, port) for proto in ("icmp", "tcp", "udp")]


# ---------------------------------------------------------------- isolation between networks


def test_guests_on_one_network_talk_and_each_reaches_its_gateway(lab: Lab) -> None:
    lab.apply()
    a1, a2, b1, c1 = (lab.guests[n] for n in ("a1", "a2", "b1", "c1"))
    assert_reach(
        passes=[
            *every(a1, a2.port.ip),
            *every(a2, a1.port.ip),
            Probe(a1, "icmp", "10.20.30.1"),
            Probe(b1, "icmp", "10.20.31.1"),
            Probe(c1, "icmp", "10.20.32.1"),
        ]
    )


def test_different_networks_cannot_reach_each_other(lab: Lab) -> None:
    a1, b1, c1 = (lab.guests[n] for n in ("a1", "b1", "c1"))
    between = [
        *every(a1, b1.port.ip),
        *every(b1, a1.port.ip),
        *every(a1, c1.port.ip),
        *every(c1, a1.port.ip),
    ]
    assert_reach(passes=between)  # routed by the host until our table is there
    lab.apply()
    assert_reach(
        passes=[
            Probe(a1, "icmp", "10.20.30.1"),
            Probe(b1, "icmp", "10.20.31.1"),
            Probe(c1, "icmp", "10.20.32.1"),
        ],
        fails=between,
    )


def test_published_ports_do_not_open_a_way_between_networks(lab: Lab) -> None:
    b1 = lab.guests["b1"]
    lab.apply([ForwardRules("tcp", 8080, lab.guests["a1"].port.ip, PORT, "vk-a")])
    assert_reach(
        passes=[Probe(lab.internet, "tcp", UPLINK, 8080)],
        fails=[Probe(b1, "tcp", "10.20.31.1", 8080), Probe(b1, "tcp", UPLINK, 8080)],
    )


# ---------------------------------------------------------------- nat and isolated egress


def test_nat_guest_reaches_the_internet_masqueraded(lab: Lab) -> None:
    lab.apply()
    a1 = lab.guests["a1"]
    answers = assert_reach(passes=every(a1, INTERNET))
    # The internet sees the host's uplink address, never the guest's.
    assert answers[1:] == [f"internet tcp {UPLINK}", f"internet udp {UPLINK}"]


def test_isolated_guest_reaches_nothing_beyond_its_bridge(lab: Lab) -> None:
    c1 = lab.guests["c1"]
    assert_reach(passes=[*every(c1, INTERNET), *every(lab.internet, c1.port.ip)])
    lab.apply()
    assert_reach(
        passes=[Probe(c1, "icmp", "10.20.32.1")],
        fails=[*every(c1, INTERNET), *every(lab.internet, c1.port.ip), *every(c1, UPLINK)],
    )


def test_the_internet_cannot_open_connections_to_nat_guests(lab: Lab) -> None:
    a1 = lab.guests["a1"]
    assert_reach(passes=every(lab.internet, a1.port.ip))
    lab.apply()
    assert_reach(fails=every(lab.internet, a1.port.ip))


# ---------------------------------------------------------------- the host's own services


def test_guest_reaches_host_services_only_with_allow_host(lab: Lab) -> None:
    a1, a2, b1 = (lab.guests[n] for n in ("a1", "a2", "b1"))  # only a2 has allow_host
    lab.apply()
    assert_reach(
        passes=[
            Probe(a2, "tcp", "10.20.30.1"),
            Probe(a2, "udp", "10.20.30.1"),
            Probe(a2, "tcp", UPLINK),
            Probe(a2, "tcp", "10.20.31.1"),
            # DNS and ping on its own gateway are always allowed
            Probe(a1, "udp", "10.20.30.1", 53),
            Probe(a1, "tcp", "10.20.30.1", 53),
            Probe(a1, "icmp", "10.20.30.1"),
        ],
        fails=[
            Probe(a1, "tcp", "10.20.30.1"),
            Probe(a1, "udp", "10.20.30.1"),
            Probe(a1, "tcp", UPLINK),
            Probe(a1, "icmp", UPLINK),
            Probe(a1, "udp", "10.20.31.1", 53),  # another network's gateway
            Probe(b1, "udp", "10.20.30.1", 53),
            Probe(b1, "icmp", "10.20.30.1"),
        ],
    )


def test_host_reaches_guests_and_gets_replies(lab: Lab) -> None:
    lab.apply()
    assert_reach(passes=[*every(None, lab.guests["a1"].port.ip), *every(None, lab.guests["c1"].port.ip)])


def test_dhcp_from_the_unspecified_address_reaches_the_host_and_nothing_else_does(lab: Lab) -> None:
    a1 = lab.guests["a1"]
    lab.apply()
    a1.ns.run(["ip", "addr", "flush", "dev", "eth0"], check=True)

    def sent_from_nowhere(sport: int, dport: int) -> str | None:
        receiver = start(None, [PYTHON, "-c", RECEIVER, str(dport), str(PROBE_TIMEOUT)])
        wait_ready(receiver, "receiver")
        a1.ns.run([PYTHON, "-c", UNSPECIFIED_SENDER, str(sport), str(dport)], check=True)
        out, _ = receiver.communicate(timeout=10)
        return out.decode().strip() if receiver.returncode == 0 else None

    assert sent_from_nowhere(68, 67) == "discover from 0.0.0.0:68"
    assert sent_from_nowhere(68, 6767) is None
    assert sent_from_nowhere(6868, 67) is None


# ---------------------------------------------------------------- published ports


def test_published_port_answers_from_outside_and_from_the_host(lab: Lab) -> None:
    a1 = lab.guests["a1"]
    lab.apply(
        [
            ForwardRules("tcp", 8080, a1.port.ip, PORT, "vk-a"),
            ForwardRules("udp", 8081, a1.port.ip, PORT, "vk-a"),
        ]
    )
    answers = assert_reach(
        passes=[
            Probe(lab.internet, "tcp", UPLINK, 8080),
            Probe(lab.internet, "udp", UPLINK, 8081),
            Probe(None, "tcp", "10.20.30.1", 8080),
            Probe(None, "tcp", UPLINK, 8080),
            Probe(None, "udp", "10.20.30.1", 8081),
        ],
        fails=[Probe(lab.internet, "tcp", UPLINK, 8081), Probe(lab.internet, "udp", UPLINK, 8080)],
    )
    # a1 answered, and saw the internet's own address (DNAT only, no source NAT).
    assert answers[:2] == [f"a1 tcp {INTERNET}", f"a1 udp {INTERNET}"]
    assert all(a is not None and a.startswith("a1 ") for a in answers)


def test_loopback_is_not_forwarded(lab: Lab) -> None:
    lab.apply([ForwardRules("tcp", 8080, lab.guests["a1"].port.ip, PORT, "vk-a")])
    assert_reach(passes=[Probe(None, "tcp", "127.0.0.1")], fails=[Probe(None, "tcp", "127.0.0.1", 8080)])


# ---------------------------------------------------------------- anti-spoofing


@pytest.mark.parametrize("spoofed", ["10.20.30.9", "10.20.30.6"], ids=["free-address", "peer-address"])
def test_guest_that_changes_its_ip_loses_connectivity(lab: Lab, spoofed: str) -> None:
    a1, a2 = lab.guests["a1"], lab.guests["a2"]
    lab.apply()
    checks = [Probe(a1, "icmp", "10.20.30.1"), Probe(a1, "udp", "10.20.30.1", 53), Probe(a1, "tcp", INTERNET)]
    if spoofed != a2.port.ip:
        checks.append(Probe(a1, "tcp", a2.port.ip))

    def readdress(ip: str) -> None:
        a1.ns.run(["ip", "addr", "flush", "dev", "eth0"], check=True)
        a1.ns.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"], check=True)
        a1.ns.run(["ip", "route", "add", "default", "via", "10.20.30.1"], check=True)

    readdress(spoofed)
    assert_reach(fails=checks)
    readdress(a1.port.ip)
    assert_reach(passes=checks)


def test_guest_that_changes_its_mac_loses_connectivity(lab: Lab) -> None:
    a1, a2 = lab.guests["a1"], lab.guests["a2"]
    lab.apply()
    checks = [Probe(a1, "icmp", "10.20.30.1"), Probe(a1, "tcp", a2.port.ip), Probe(a1, "tcp", INTERNET)]
    a1.ns.run(["ip", "link", "set", "eth0", "address", "52:54:00:0a:00:99"], check=True)
    assert_reach(fails=checks)
    a1.ns.run(["ip", "link", "set", "eth0", "address", a1.port.mac], check=True)
    assert_reach(passes=checks)


def test_ipv6_from_a_port_is_dropped(lab: Lab) -> None:
    a1, a2 = lab.guests["a1"], lab.guests["a2"]
    for guest, ip in ((a1, "fd00::5"), (a2, "fd00::6")):
        guest.ns.run(["ip", "-6", "addr", "add", f"{ip}/64", "dev", "eth0", "nodad"], check=True)
    def ping6(wait: int) -> int:
        return a1.ns.run(["busybox", "ping", "-6", "-c1", f"-W{wait}", "fd00::6"]).returncode

    # Passing first, given time: a neighbour solicitation comes before the echo, and 1 s for both
    # was once too short in the suite, on a busy host.
    assert ping6(5) == 0
    lab.apply()
    assert ping6(1) != 0


# ---------------------------------------------------------------- anti-spoofing at layer 2 (bridge virtkit)

BROADCAST = "ff:ff:ff:ff:ff:ff"
NOBODY = "00:00:00:00:00:00"
OTHER_MAC = "52:54:00:0a:00:99"
ETH_IPV4, ETH_ARP, ETH_RARP, ETH_IPV6, ETH_VLAN, ETH_QINQ, ETH_LOCAL = (
    0x0800,
    0x0806,
    0x8035,
    0x86DD,
    0x8100,
    0x88A8,
    0x88B5,
)


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _ip(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def ether(src: str, dst: str, ethertype: int, payload: bytes) -> bytes:
    return _mac(dst) + _mac(src) + struct.pack("!H", ethertype) + payload


def arp(op: int, sha: str, spa: str, tpa: str, *, ptype: int = ETH_IPV4) -> bytes:
    """An ARP body (op 1 request, 2 reply, 3 RARP request); its 28 bytes also identify it."""
    return struct.pack("!HHBBH", 1, ptype, 6, 4, op) + _mac(sha) + _ip(spa) + _mac(NOBODY) + _ip(tpa)


def ipv4_udp(src: str, dst: str, payload: bytes) -> bytes:
    """A valid IPv4 header (br_netfilter drops invalid ones) and UDP without a checksum, from and to
    the discard port: no echo server answers it. (From and to PORT, every accepted frame started
    the two guests' echo servers answering each other for ever: a storm of ~100,000 datagrams a
    round that overflowed the sniffer's buffer, so frames that passed read as dropped.)"""
    udp = struct.pack("!HHHH", DISCARD, DISCARD, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, _ip(src), _ip(dst))
    words = sum(struct.unpack("!10H", header))
    while words > 0xFFFF:
        words = (words & 0xFFFF) + (words >> 16)
    return header[:10] + struct.pack("!H", ~words & 0xFFFF) + header[12:] + udp


def ipv6(payload: bytes) -> bytes:
    """An IPv6 packet with no next header, between two documentation addresses."""
    src, dst = (ipaddress.IPv6Address(a).packed for a in ("2001:db8::5", "2001:db8::6"))
    return struct.pack("!IHBB", 6 << 28, len(payload), 59, 64) + src + dst + payload


def vlan(vid: int, ethertype: int, payload: bytes) -> bytes:
    return struct.pack("!HH", vid, ethertype) + payload


def send_frames(guest: Guest, frames: Sequence[bytes]) -> None:
    guest.ns.run([PYTHON, "-c", FRAMES, *(f.hex() for f in frames)], check=True)


def frames_seen(sender: Guest, receiver: Guest, frames: Sequence[tuple[bytes, bytes]]) -> list[bool]:
    """Send each (frame, marker) from `sender`; which markers `receiver` saw on its eth0."""
    sniffer = receiver.ns.popen(
        [PYTHON, "-c", SNIFFER, str(PROBE_TIMEOUT), *(m.hex() for _, m in frames)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_ready(sniffer, f"sniffer in {receiver.name}")
    send_frames(sender, [f for f, _ in frames])
    out, _ = sniffer.communicate(b"sent\n", timeout=PROBE_TIMEOUT + 60)
    assert sniffer.returncode == 0, out
    return [bit == "1" for bit in out.decode().split()]


def test_a_port_passes_only_its_own_ipv4_and_arp(lab: Lab) -> None:
    a1, a2 = lab.guests["a1"], lab.guests["a2"]
    mac, ip, peer = a1.port.mac, a1.port.ip, a2.port.ip

    def marked(n: int) -> bytes:
        return f"virtkit frame {n:02d}".encode()

    def udp(src_mac: str, src_ip: str, n: int, ethertype: int = ETH_IPV4, wrap: int = 0) -> bytes:
        packet = ipv4_udp(src_ip, peer, marked(n))
        return ether(src_mac, a2.port.mac, wrap or ethertype, vlan(5, ethertype, packet) if wrap else packet)

    probe = arp(1, mac, "0.0.0.0", peer)  # RFC 5227: "is anyone using this address?"
    announcement = arp(1, mac, ip, ip)
    reply = arp(2, mac, ip, peer)
    passing = {
        "its own IPv4": (udp(mac, ip, 1), marked(1)),
        "an ARP probe": (ether(mac, BROADCAST, ETH_ARP, probe), probe),
        "an ARP announcement": (ether(mac, BROADCAST, ETH_ARP, announcement), announcement),
        "an ARP reply": (ether(mac, a2.port.mac, ETH_ARP, reply), reply),
    }
    ipv6_arp = arp(1, mac, ip, peer, ptype=ETH_IPV6)
    rarp = arp(3, mac, ip, peer)
    dropped = {
        "IPv4 from another address": (udp(mac, "10.20.30.99", 2), marked(2)),
        "IPv4 from another MAC": (udp(OTHER_MAC, ip, 3), marked(3)),
        "IPv4 from nowhere, not DHCP": (udp(mac, "0.0.0.0", 4), marked(4)),
        "IPv4 in a VLAN tag": (udp(mac, ip, 5, wrap=ETH_VLAN), marked(5)),
        "IPv4 in an 802.1ad tag": (udp(mac, ip, 6, wrap=ETH_QINQ), marked(6)),
        "IPv6": (ether(mac, a2.port.mac, ETH_IPV6, ipv6(marked(7))), marked(7)),
        "ARP for IPv6 addresses": (ether(mac, BROADCAST, ETH_ARP, ipv6_arp), ipv6_arp),
        "RARP": (ether(mac, BROADCAST, ETH_RARP, rarp), rarp),
        "a local experimental ethertype": (ether(mac, a2.port.mac, ETH_LOCAL, marked(8)), marked(8)),
    }
    frames = [*passing.values(), *dropped.values()]
    names = [*passing, *dropped]
    assert dict(zip(names, frames_seen(a1, a2, frames), strict=True)) == dict.fromkeys(names, True)
    lab.apply()
    seen = dict(zip(names, frames_seen(a1, a2, frames), strict=True))
    assert seen == {**dict.fromkeys(passing, True), **dict.fromkeys(dropped, False)}


def neighbours(ns: Namespace | None, dev: str) -> dict[str, str]:
    """The IPv4 neighbour table of a device: address -> MAC, for entries that have one."""
    argv = ["ip", "-4", "-j", "neigh", "show", "dev", dev]
    out = host_run(argv).stdout if ns is None else ns.run(argv, check=True).stdout
    return {n["dst"]: n["lladdr"] for n in json.loads(out) if n.get("lladdr")}


def drops(device: str) -> int:
    """Packets counted by the drop rule of a port's chain in the bridge table."""
    listing = json.loads(
        host_run(["nft", "-j", "list", "chain", "bridge", "virtkit", f"port_{device}"]).stdout
    )
    rules = [item["rule"] for item in listing["nftables"] if "rule" in item]
    counters = [e["counter"] for r in rules for e in r["expr"] if "counter" in e]
    return sum(int(c["packets"]) for c in counters)


def test_spoofed_arp_never_reaches_a_peer_and_honest_arp_works(lab: Lab) -> None:
    a1, a2 = lab.guests["a1"], lab.guests["a2"]
    gateway = lab.nets["vk-a"].rules.gateway
    bridge_mac = json.loads(host_run(["ip", "-j", "link", "show", "vk-a"]).stdout)[0]["address"]
    # Each a request to the victim's own address, so that the victim records the sender whatever
    # it knew before: (what, victim, its device, the frame's source MAC, ARP sender MAC and address).
    mac1, ip1, ip2 = a1.port.mac, a1.port.ip, a2.port.ip
    spoofs = [
        ("claims the gateway's address to a2", a2.ns, "eth0", mac1, mac1, gateway),
        ("claims a2's address to the host", None, "vk-a", mac1, mac1, ip2),
        ("claims its own address with another ARP sender MAC", a2.ns, "eth0", mac1, OTHER_MAC, ip1),
        ("claims its own address with another MAC", a2.ns, "eth0", OTHER_MAC, "52:54:00:0a:00:98", ip1),
    ]

    def frame(victim: Namespace | None, src: str, sha: str, spa: str) -> bytes:
        return ether(src, BROADCAST, ETH_ARP, arp(1, sha, spa, a2.port.ip if victim else gateway))

    def honest_traffic() -> None:  # fills every neighbour table this test reads, honestly
        assert_reach(
            passes=[
                Probe(a1, "icmp", a2.port.ip),
                Probe(a2, "icmp", a1.port.ip),
                Probe(a2, "icmp", gateway),
                Probe(None, "icmp", a1.port.ip),
                Probe(None, "icmp", a2.port.ip),
            ]
        )

    honest_traffic()
    for what, victim, dev, src, sha, spa in spoofs:  # without our tables, each lands at once
        send_frames(a1, [frame(victim, src, sha, spa)])
        assert neighbours(victim, dev).get(spa) == sha, f"without the firewall, a1 {what}: not learnt"
    a2.ns.run(["ip", "neigh", "flush", "dev", "eth0"], check=True)
    host_run(["ip", "neigh", "flush", "dev", "vk-a"])

    lab.apply()
    honest_traffic()  # resolved by honest ARP both ways, through the firewall
    assert {k: v for k, v in neighbours(a2.ns, "eth0").items() if k in (a1.port.ip, gateway)} == {
        a1.port.ip: a1.port.mac,
        gateway: bridge_mac,
    }
    host_before = neighbours(None, "vk-a")
    assert host_before[a1.port.ip] == a1.port.mac and host_before[a2.port.ip] == a2.port.mac
    a2_before, dropped_before = neighbours(a2.ns, "eth0"), drops(a1.port.device)
    send_frames(a1, [frame(victim, src, sha, spa) for _, victim, _, src, sha, spa in spoofs])
    # What a1 sends after its spoofs arrives after them: once it is answered, they would have landed.
    assert_reach(passes=[Probe(a1, "icmp", a2.port.ip), Probe(a1, "icmp", gateway)])
    assert neighbours(a2.ns, "eth0") == a2_before
    assert neighbours(None, "vk-a") == host_before
    assert drops(a1.port.device) >= dropped_before + len(spoofs)


def test_a_port_is_guarded_from_the_moment_its_device_appears(lab: Lab) -> None:
    """Ports are matched by name in the bridge table: one given before its device exists is no
    error, and its device is judged as soon as it is on the bridge, without a new apply."""
    nets, ports, _ = lab.describe()
    late = lab.port("late", "vk-a", 7, allow_host=False)
    nft.apply(nft.render(nets, [*ports, late], []))
    lab._guest("late", "vk-a", 7, allow_host=False)
    guest, a1 = lab.guests["late"], lab.guests["a1"]
    assert guest.port == late
    assert_reach(passes=[Probe(guest, "icmp", a1.port.ip), Probe(guest, "icmp", "10.20.30.1")])
    guest.ns.run(["ip", "link", "set", "eth0", "address", OTHER_MAC], check=True)
    guest.ns.run(["ip", "neigh", "flush", "dev", "eth0"], check=True)
    assert_reach(fails=[Probe(guest, "icmp", a1.port.ip), Probe(guest, "icmp", "10.20.30.1")])


# ---------------------------------------------------------------- the table itself


def test_apply_replaces_only_our_tables_and_remove_is_idempotent(lab: Lab) -> None:
    for family, hook in (("inet", "input"), ("bridge", "prerouting")):
        host_run(["nft", "add", "table", family, "admin"])
        host_run(
            ["nft", "add", "chain", family, "admin", hook, f"{{ type filter hook {hook} priority 10; }}"]
        )
        host_run(["nft", "add", "rule", family, "admin", hook, "meta l4proto tcp counter accept"])

    def admin() -> list[str]:
        return [host_run(["nft", "-s", "list", "table", f, "admin"]).stdout for f in ("inet", "bridge")]

    def tables() -> list[str]:
        return sorted(host_run(["nft", "list", "tables"]).stdout.splitlines())

    theirs = admin()
    assert not nft.present()
    nft.remove()
    lab.apply()
    assert tables() == [
        "table bridge admin",
        "table bridge virtkit",
        "table inet admin",
        "table inet virtkit",
    ]
    nets, ports, _ = lab.describe()
    a1 = lab.guests["a1"]
    forward = ForwardRules("tcp", 8080, a1.port.ip, PORT, "vk-a")
    nft.apply(nft.render(nets, [p for p in ports if p != a1.port], [forward]))
    assert nft.present()
    assert "dport 8080" in host_run(["nft", "list", "table", "inet", "virtkit"]).stdout
    bridge = host_run(["nft", "list", "table", "bridge", "virtkit"]).stdout
    assert "port_vkp-a1" not in bridge and "chain port_vkp-a2" in bridge  # replaced, not merged
    nft.remove()
    nft.remove()
    assert not nft.present()
    assert tables() == ["table bridge admin", "table inet admin"]
    assert admin() == theirs


def test_a_failed_apply_changes_nothing(lab: Lab) -> None:
    lab.apply()
    before = host_run(["nft", "-s", "list", "ruleset"]).stdout  # -s: counters move by themselves
    # Broken in the bridge table, the last in the script: the inet table before it is not applied either.
    head, _, tail = nft.render(
        *lab.describe([ForwardRules("tcp", 8080, "10.20.30.5", 80, "vk-a")])
    ).rpartition("counter drop")
    with pytest.raises(ToolError) as caught:
        nft.apply(head + "counter dropp" + tail)
    assert caught.value.returncode == 1
    assert caught.value.argv == ["nft", "-f", "-"]
    assert "dropp" in caught.value.stderr
    assert host_run(["nft", "-s", "list", "ruleset"]).stdout == before


# ---------------------------------------------------------------- foreign firewalls


def _foreign_drop(kind: str) -> None:
    if kind == "docker":  # what Docker leaves, through iptables-nft
        for args in (
            ["-P", "FORWARD", "DROP"],
            ["-N", "DOCKER-USER"],
            ["-A", "FORWARD", "-j", "DOCKER-USER"],
        ):
            host_run(["iptables-nft", *args])
        host_run(["iptables-nft", "-A", "DOCKER-USER", "-j", "RETURN"])
    else:
        host_run(["nft", "add", "table", "ip", "filter"])
        host_run(
            [
                "nft",
                "add",
                "chain",
                "ip",
                "filter",
                "FORWARD",
                "{ type filter hook forward priority 0; policy drop; }",
            ]
        )
        host_run(
            [
                "nft",
                "add",
                "rule",
                "ip",
                "filter",
                "FORWARD",
                "oifname",
                "uplink",
                "tcp",
                "dport",
                "25",
                "drop",
            ]
        )


@pytest.mark.parametrize("kind", ["plain", "docker"])
def test_foreign_forward_drop_is_opened_for_our_bridges_and_closed_again(lab: Lab, kind: str) -> None:
    a1, b1 = lab.guests["a1"], lab.guests["b1"]
    lab.apply()
    _foreign_drop(kind)
    before = host_run(["nft", "-s", "list", "table", "ip", "filter"]).stdout
    assert nftforeign.foreign_forward_drops() == ["ip filter FORWARD"]
    same_bridge = Probe(a1, "tcp", lab.guests["a2"].port.ip)
    with open("/proc/sys/net/bridge/bridge-nf-call-iptables") as f:
        br_netfilter = f.read().strip() == "1"  # bridged frames then pass the forward hooks too
    assert_reach(fails=[Probe(a1, "tcp", INTERNET), *([same_bridge] if br_netfilter else [])])

    nftforeign.open_foreign(["vk-a", "vk-b", "vk-c"])
    nftforeign.open_foreign(["vk-a", "vk-b", "vk-c"])  # replaces, does not pile up
    listing = host_run(["nft", "-s", "list", "table", "ip", "filter"]).stdout
    assert listing.count('comment "virtkit"') == 6
    if kind == "docker":
        assert host_run(["iptables-nft", "-S", "DOCKER-USER"]).stdout.count("--comment virtkit") == 6
        assert "virtkit" not in host_run(["iptables-nft", "-S", "FORWARD"]).stdout
    assert_reach(
        passes=[Probe(a1, "tcp", INTERNET), same_bridge],
        fails=[
            Probe(a1, "tcp", b1.port.ip),
            Probe(lab.guests["c1"], "tcp", INTERNET),
        ],  # our table still rules
    )

    nftforeign.close_foreign()
    nftforeign.close_foreign()
    assert host_run(["nft", "-s", "list", "table", "ip", "filter"]).stdout == before
    assert_reach(fails=[Probe(a1, "tcp", INTERNET)])


def test_no_foreign_drop_means_nothing_to_open(lab: Lab) -> None:
    host_run(["nft", "add", "table", "ip", "filter"])
    host_run(["nft", "add", "chain", "ip", "filter", "FORWARD", "{ type filter hook forward priority 0; }"])
    lab.apply()
    before = host_run(["nft", "-s", "list", "ruleset"]).stdout  # -s: counters move by themselves
    assert nftforeign.foreign_forward_drops() == []
    nftforeign.open_foreign(["vk-a"])
    nftforeign.close_foreign()
    assert host_run(["nft", "-s", "list", "ruleset"]).stdout == before
