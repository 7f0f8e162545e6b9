"""A network lab for the e2e tests: virtkit runs in its own network namespace (the "host"), whose
default route goes through a veth to another namespace standing for the internet. Nothing ever
leaves this machine; the machine's own network is never touched.

    internet ns  172.31.250.2/24 ──veth── 172.31.250.1/24  host ns (virtkit, its bridges, dnsmasq)
                  (a TCP echo/HTTP server here)             default via 172.31.250.2

The internet namespace has no route to any virtkit subnet: only a masqueraded packet (source
172.31.250.1) can get an answer, which is what NAT tests prove.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import VIRTKIT, seed_root
from tests.netns import Namespace, without_carrier

UPLINK_HOST = "172.31.250.1"
UPLINK_INTERNET = "172.31.250.2"


@dataclass
class Lab:
    host: Namespace
    internet: Namespace
    root: Path

    def virtkit(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VIRTKIT_ROOT": str(self.root)}
        return subprocess.run(self.host.argv([str(VIRTKIT), *args]), capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)  # fmt: skip

    def ok(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = self.virtkit(*args, timeout=timeout)
        assert done.returncode == 0, f"virtkit {' '.join(args)}: {done.stderr}"
        return done

    def exec(self, name: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.virtkit("exec", name, "--", "sh", "-c", script, timeout=timeout)

    def show(self, name: str) -> dict[str, object]:
        document: dict[str, object] = json.loads(self.ok("show", name, "--json").stdout)
        return document

    def nic_ip(self, name: str, index: int = 0) -> str:
        nics = self.show(name)["nics"]
        assert isinstance(nics, list)
        return str(nics[index]["ip"])

    def wait_address(self, name: str, timeout: float = 40) -> str:
        """Until the instance's eth0 holds the address virtkit gave it (its DHCP client got the lease)."""
        ip = self.nic_ip(name)
        deadline = time.monotonic() + timeout
        said = ""
        while time.monotonic() < deadline:
            shown = self.exec(name, "ip -4 -o addr show dev eth0", timeout=30)
            said = shown.stdout + shown.stderr
            if f" {ip}/" in said:
                return ip
            time.sleep(0.5)
        raise AssertionError(f"{name} never got {ip} by DHCP: {said}")

    def snapshot(self) -> dict[str, object]:
        """What the host namespace's networking looks like: links, IPv4 addresses and routes, the
        whole ruleset (IPv6 link-local addresses and the links' carrier come and go by themselves:
        left out)."""
        links = without_carrier(json.loads(self.host.run(["ip", "-j", "link"], check=True).stdout))
        return {
            "link": sorted((link["ifname"], link.get("master"), tuple(link["flags"])) for link in links),
            "addr": self.host.run(["ip", "-j", "-4", "addr"], check=True).stdout,
            "route": self.host.run(["ip", "-j", "-4", "route", "show", "table", "all"], check=True).stdout,
            "nft": self.host.run(["nft", "list", "ruleset"], check=True).stdout,
        }


def _uplink(host: Namespace, internet: Namespace) -> None:
    subprocess.run(["ip", "link", "add", "up0", "netns", host.name, "type", "veth", "peer", "name", "wan0",
                    "netns", internet.name], check=True)  # fmt: skip
    host.run(["ip", "addr", "add", f"{UPLINK_HOST}/24", "dev", "up0"], check=True)
    host.run(["ip", "link", "set", "up0", "up"], check=True)
    host.run(["ip", "route", "add", "default", "via", UPLINK_INTERNET], check=True)
    internet.run(["ip", "addr", "add", f"{UPLINK_INTERNET}/24", "dev", "wan0"], check=True)
    internet.run(["ip", "link", "set", "wan0", "up"], check=True)


@pytest.fixture
def lab(state_root: Path, tiny_template: Path) -> Iterator[Lab]:
    """A state root with the tiny image, used from a fresh host namespace with an "internet"."""
    seed_root(tiny_template, state_root)
    host, internet = Namespace("vkh"), Namespace("vki")
    made = Lab(host, internet, state_root)
    try:
        _uplink(host, internet)
        yield made
    finally:
        _teardown(made)


def _teardown(lab: Lab) -> None:
    listed = lab.virtkit("list", "--json")
    for instance in json.loads(listed.stdout or "[]"):
        lab.virtkit("delete", "--force", instance["name"], timeout=60)
        console = lab.root / "instances" / instance["name"] / "console.log"
        if console.exists():
            print(f"--- console of {instance['name']} ---\n{console.read_text(errors='replace')[-3000:]}")
    networks = lab.virtkit("network", "list", "--json")
    for network in json.loads(networks.stdout or "[]"):
        lab.virtkit("network", "delete", network["name"])
    for pidfile in lab.root.glob("networks/*/dnsmasq.pid"):  # never leave a dnsmasq behind
        _kill_pidfile(pidfile)
    lab.host.delete()
    lab.internet.delete()


def _kill_pidfile(pidfile: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pidfile.read_text().strip()), 9)


Server = Callable[..., subprocess.Popen[bytes]]


def tcp_server(ns: Namespace, address: str, port: int, reply: str = "hello") -> subprocess.Popen[bytes]:
    """A TCP server in `ns` answering every connection with `reply` and the peer's address."""
    code = (
        "import socket\n"
        f"s = socket.create_server(({address!r}, {port}))\n"
        "while True:\n"
        "    c, peer = s.accept()\n"
        f"    c.sendall(({reply!r} + ' ' + peer[0] + '\\n').encode())\n"
        "    c.close()\n"
    )
    server = ns.popen(["python3", "-c", code])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if f":{port:04X}" in " ".join(ns.run(["cat", "/proc/net/tcp"]).stdout.split()):
            return server
        time.sleep(0.05)
    server.kill()
    raise AssertionError(f"the test server on {address}:{port} did not start")
