"""Bridged networks as a user types them: `virtkit network create lan --type bridged --parent IFACE`
puts VMs on the LAN behind a host interface (its DHCP server gives their addresses); bad uplinks and
hostile names are refused with the host's networking untouched; deleting the network gives the
interface back as it was."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.netlab import Lab, lab  # noqa: F401  (the fixture)
from tests.e2e.test_network_cli import assert_refused

LAN_GATEWAY = "192.168.77.1"
# Asks on DEV who has TARGET (ARP, from SOURCE) for up to 2 s; prints "answered" or "silent".
ARP_PROBE = """
import socket, struct, sys, time
dev, target, source = sys.argv[1:4]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((dev, 0))
mac = s.getsockname()[4]
ask = (b"\\xff" * 6 + mac + b"\\x08\\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac
       + socket.inet_aton(source) + b"\\0" * 6 + socket.inet_aton(target))
s.settimeout(0.2)
deadline = time.monotonic() + 2
while time.monotonic() < deadline:
    s.send(ask)
    try:
        got = s.recv(100)
    except TimeoutError:
        continue
    if got[12:14] == b"\\x08\\x06" and got[20:22] == b"\\0\\x02" and got[28:32] == socket.inet_aton(target):
        print("answered")
        break
else:
    print("silent")
"""


@pytest.fixture
def lan(lab: Lab, tmp_path: Path) -> Iterator[Path]:  # noqa: F811
    """A spare link `lan0` of the host (no address) to a LAN in the internet namespace, whose
    dnsmasq hands out 192.168.77.100-150; its leases file."""
    subprocess.run(["ip", "link", "add", "lan0", "netns", lab.host.name, "type", "veth", "peer", "name",
                    "lanp", "netns", lab.internet.name], check=True)  # fmt: skip
    lab.internet.run(["ip", "addr", "add", f"{LAN_GATEWAY}/24", "dev", "lanp"], check=True)
    lab.internet.run(["ip", "link", "set", "lanp", "up"], check=True)
    leases = tmp_path / "lan.leases"
    argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--interface=lanp",
            "--bind-interfaces", "--dhcp-range=192.168.77.100,192.168.77.150,10m",
            f"--dhcp-leasefile={leases}", "--pid-file=", "--user=root"]  # fmt: skip
    server = lab.internet.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield leases
    finally:
        server.kill()
        server.wait(10)


def _lease(leases: Path, mac: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in leases.read_text().splitlines() if leases.exists() else []:
            if line.split()[1:2] == [mac]:
                return line.split()[2]
        time.sleep(0.2)
    raise AssertionError(f"no lease for {mac} within {timeout:g} s")


def _master(lab: Lab, name: str) -> str | None:  # noqa: F811
    shown = json.loads(lab.host.run(["ip", "-j", "link", "show", "dev", name], check=True).stdout)
    return shown[0].get("master")


def _carrier(lab: Lab, name: str, timeout: float = 10) -> None:  # noqa: F811
    """Until `name` (just set up) has its carrier: the host's snapshots compare settled links."""
    deadline = time.monotonic() + timeout
    while "LOWER_UP" not in lab.host.run(["ip", "-j", "link", "show", "dev", name], check=True).stdout:
        assert time.monotonic() < deadline, f"{name} has no carrier"
        time.sleep(0.05)


def test_a_vm_on_a_bridged_network_is_on_the_lan_and_the_host_is_not(lab: Lab, lan: Path) -> None:  # noqa: F811
    before = lab.snapshot()
    made = lab.ok("network", "create", "lan", "--type", "bridged", "--parent", "lan0").stdout
    assert made == ("Network lan created: bridged, vk-lan with uplink lan0; its instances take their "
                    "addresses from that LAN.\n")  # fmt: skip
    assert _master(lab, "lan0") == "vk-lan"
    _carrier(lab, "lan0")
    listed = json.loads(lab.ok("network", "list", "--json").stdout)
    assert [(n["name"], n["type"], n["parent"], n["state"], n["subnet"]) for n in listed] == [
        ("lan", "bridged", "lan0", "up", "")]
    assert "(via lan0)" in lab.ok("network", "list").stdout
    shown = lab.ok("network", "show", "lan").stdout
    assert "lan0 (attached)" in shown and "from the LAN behind the uplink" in shown
    assert not list(lab.root.glob("networks/lan/dnsmasq.pid"))  # no DHCP of ours on someone's LAN
    addr = json.loads(lab.host.run(["ip", "-j", "-4", "addr", "show", "dev", "vk-lan"], check=True).stdout)
    assert not any(a.get("addr_info") for a in addr), addr  # the host has no address on it

    lab.ok("launch", "tiny", "v1", "--vm", "--network", "lan", "--wait", timeout=180)
    nic = lab.show("v1")["nics"][0]  # type: ignore[index]
    assert nic["ip"] == ""
    ip = _lease(lan, nic["mac"])
    said = lab.exec("v1", f"ping -c 1 -W 5 {LAN_GATEWAY}; ip -4 -o addr show dev eth0", timeout=60)
    assert "1 packets received" in said.stdout and f" {ip}/24" in said.stdout, said.stdout + said.stderr
    assert f"{ip} (eth0)" not in lab.ok("list").stdout and "- (eth0)" in lab.ok("list").stdout
    assert "(from its LAN) on lan" in lab.ok("show", "v1").stdout
    ruleset = lab.host.run(["nft", "list", "table", "bridge", "virtkit"], check=True).stdout
    assert f'"lan0", "{nic["device"]}"' in ruleset  # nothing from the LAN reaches the host itself
    # a LAN neighbour asks who has an address: the VM answers for its own; the host does not answer
    # for its own through the VMs' bridge (Linux would, by default, on any of its interfaces)
    for target, said in ((ip, "answered"), ("172.31.250.1", "silent")):
        probe = lab.internet.run(["python3", "-c", ARP_PROBE, "lanp", target, LAN_GATEWAY], check=True)
        assert probe.stdout.strip() == said, (target, probe.stdout, probe.stderr)

    assert_refused(lab, ["network", "delete", "lan"], 1, "in use by v1")
    lab.ok("delete", "--force", "v1", timeout=120)
    lab.host.run(["ip", "link", "del", "vk-lan"], check=True)  # as after a reboot
    assert json.loads(lab.ok("network", "list", "--json").stdout)[0]["state"] == "down"
    repaired = lab.ok("network", "reconcile").stdout
    assert "lan: bridge restored" in repaired and _master(lab, "lan0") == "vk-lan", repaired
    lab.host.run(["ip", "link", "set", "lan0", "nomaster"], check=True)  # someone took it away
    assert "lan: uplink lan0 restored" in lab.ok("network", "reconcile").stdout
    assert _master(lab, "lan0") == "vk-lan"
    assert lab.ok("network", "delete", "lan").stdout == "Network lan deleted.\n"
    assert _master(lab, "lan0") is None
    assert lab.snapshot() == before


def test_bad_uplinks_and_hostile_names_are_refused_and_change_nothing(lab: Lab, lan: Path) -> None:  # noqa: F811
    lab.host.run(["ip", "link", "add", "spare0", "type", "veth", "peer", "name", "spare1"], check=True)
    lab.host.run(["ip", "link", "add", "br9", "type", "bridge"], check=True)
    lab.host.run(["ip", "link", "set", "spare1", "master", "br9"], check=True)
    for args, code, words in (
        (["--parent", "up0"], 1, ("has the host's address 172.31.250.1/24", "Hint:")),  # the host's own
        (["--parent", "nosuch0"], 1, ("interface nosuch0 not found",)),
        (["--parent", "lo"], 1, ("cannot be an uplink",)),
        (["--parent", "br9"], 1, ("cannot be an uplink",)),
        (["--parent", "spare1"], 1, ("already a port of br9",)),
        (["--parent", "vk-lan"], 1, ("virtkit's own",)),
        (["--parent", "../../etc"], 2, ("invalid uplink interface name",)),
        (["--parent", "a" * 40], 2, ("invalid uplink interface name",)),
        (["--parent", ""], 2, ("invalid uplink interface name",)),
        (["--parent", "x;reboot"], 1, ("interface x;reboot not found",)),
        ([], 2, ("needs its uplink (--parent IFACE)",)),
        (["--parent", "lan0", "--subnet", "10.9.0.0/24"], 2, ("no subnet",)),
    ):
        assert_refused(lab, ["network", "create", "lan", "--type", "bridged", *args], code, *words)
    assert_refused(lab, ["network", "create", "web", "--parent", "lan0"], 2, "only it takes one")
    wrong = lab.virtkit("network", "create", "lan", "--type", "bridge", "--parent", "lan0")
    assert wrong.returncode == 2 and "'bridge' is not one of 'nat', 'isolated', 'bridged'" in wrong.stderr

    lab.ok("network", "create", "lan", "--type", "bridged", "--parent", "lan0")
    _carrier(lab, "lan0")
    assert_refused(lab, ["network", "create", "lan2", "--type", "bridged", "--parent", "lan0"], 1,
                   "lan0 is already a port of vk-lan")  # fmt: skip
    for args, words in (
        (["launch", "tiny", "c1", "--container", "--network", "lan"], ("only VMs",)),
        (["launch", "tiny", "v1", "--vm", "--network", "lan,ip=192.168.77.20"], ("LAN behind its uplink",)),
    ):
        assert_refused(lab, args, 2, *words)
    assert lab.ok("list", "--json").stdout.strip() == "[]"
    lab.ok("network", "delete", "lan")
    assert _master(lab, "lan0") is None
