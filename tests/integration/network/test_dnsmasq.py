"""A network's dnsmasq on a real bridge, each test in its own network namespace (`own_netns`).

The test's namespace is the host: a bridge with the gateway address, and guests as named
namespaces joined to it by veth pairs (host end enslaved to the bridge) with the MACs the config
lists. Guests take their lease with busybox's udhcpc, whose script prints what it was given and
applies the address, then ask names with busybox nslookup. Nothing here can reach a real outside
address: the namespace has no route out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from tests.netns import Namespace, own_netns
from tests.permissions import reachable
from virtkit.errors import ToolError
from virtkit.network.dnsmasq import Config, Dnsmasq, Host, daemon_user

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("dnsmasq", path="/usr/sbin:/usr/bin") is None, reason="needs dnsmasq"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox"),
]

GATEWAY = "10.77.0.1"
A = Host("02:00:00:77:00:0a", "10.77.0.10", "alpha")
B = Host("02:00:00:77:00:0b", "10.77.0.11", "bravo")
STRANGER = "02:00:00:77:00:ee"

# udhcpc runs this with the event as $1 and the lease in its environment; its stdout is udhcpc's.
SCRIPT = """#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    echo "LEASE ip=$ip mask=$mask router=$router dns=$dns domain=$domain hostname=$hostname lease=$lease"
    ;;
esac
"""
_ADDRESS_RE = re.compile(r"^Address:\s*(\d+\.\d+\.\d+\.\d+)$", re.MULTILINE)


def config(**changes: object) -> Config:
    base = Config(network="lab", bridge="vk-t", gateway=GATEWAY, subnet="10.77.0.0/24", domain="lab.test",
                  upstream=True, hosts=(A, B))
    return replace(base, **changes)  # type: ignore[arg-type]


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, already exited, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class Lab:
    tmp: Path
    daemons: list[Dnsmasq] = field(default_factory=list)
    spaces: list[Namespace] = field(default_factory=list)
    veths: int = 0

    def bridge(self, name: str = "vk-t", address: str = f"{GATEWAY}/24") -> None:
        # A fixed MAC: left to itself a bridge takes its lowest port's, so a guest joining later could
        # change the gateway's MAC under the others' ARP caches (DNS then stalls for seconds).
        mac = "02:00:00:00:%02x:01" % (sum(name.encode()) % 256)
        ip("link", "add", name, "address", mac, "type", "bridge")
        ip("addr", "add", address, "dev", name)
        ip("link", "set", name, "up")

    def dnsmasq(self, network: str = "lab") -> Dnsmasq:
        daemon = Dnsmasq(self.tmp / "root" / "networks" / network)
        self.daemons.append(daemon)
        return daemon

    def guest(self, mac: str, bridge: str = "vk-t") -> Namespace:
        ns = Namespace("vkd")
        self.spaces.append(ns)
        host_end = f"vkd{self.veths}"
        self.veths += 1
        ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        ip("link", "set", host_end, "master", bridge, "up")
        ns.run(["ip", "link", "set", "eth0", "address", mac], check=True)
        ns.run(["ip", "link", "set", "eth0", "up"], check=True)
        return ns

    def dhcp_start(self, ns: Namespace, tries: int = 5) -> subprocess.Popen[bytes]:
        script = self.tmp / "udhcpc.sh"
        if not script.exists():
            script.write_text(SCRIPT)
            script.chmod(0o755)
        argv = ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", str(tries), "-T", "1", "-s", str(script)]
        return ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    @staticmethod
    def dhcp_result(client: subprocess.Popen[bytes]) -> dict[str, str] | None:
        """What the lease gave (the script's LEASE line), None when udhcpc got none."""
        out, _ = client.communicate(timeout=30)
        text = out.decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("LEASE "):
                return dict(item.split("=", 1) for item in line.split()[1:])
        assert client.returncode != 0, text
        return None

    def dhcp(self, ns: Namespace, tries: int = 5) -> dict[str, str] | None:
        return self.dhcp_result(self.dhcp_start(ns, tries))

    @staticmethod
    def lookup(ns: Namespace, name: str, server: str = GATEWAY) -> tuple[list[str], str]:
        """The addresses nslookup found for `name`, and its whole output."""
        result = ns.run(["busybox", "nslookup", name, server], timeout=15)
        text = result.stdout + result.stderr
        return _ADDRESS_RE.findall(text), text


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    (tmp_path / "root").mkdir()
    reachable(tmp_path / "root")  # as /var/lib is: dnsmasq's user must reach its hosts files
    with own_netns():
        made = Lab(tmp_path)
        try:
            yield made
        finally:
            for daemon in made.daemons:
                if daemon.log_file.exists():  # pytest shows it when the test failed
                    print(f"--- {daemon.log_file}\n{daemon.log_file.read_text(errors='replace')}")
                daemon.stop()
            for ns in made.spaces:
                ns.delete()


def test_each_guest_gets_its_address_and_a_stranger_none(lab: Lab) -> None:
    lab.bridge()
    dnsmasq = lab.dnsmasq()
    dnsmasq.start(config())
    guests = [lab.guest(A.mac), lab.guest(B.mac)]
    stranger = lab.guest(STRANGER)
    clients = [lab.dhcp_start(ns) for ns in guests] + [lab.dhcp_start(stranger, tries=3)]
    first, second, unknown = (lab.dhcp_result(client) for client in clients)
    assert first == {"ip": A.ip, "mask": "24", "router": GATEWAY, "dns": GATEWAY, "domain": "lab.test",
                     "hostname": A.name, "lease": "3600"}
    assert second is not None and second["ip"] == B.ip and second["hostname"] == B.name
    assert unknown is None
    leases = {lease.mac: lease for lease in dnsmasq.leases()}
    assert set(leases) == {A.mac, B.mac}
    assert (leases[A.mac].ip, leases[A.mac].hostname) == (A.ip, A.name)
    assert leases[A.mac].expiry is not None and 3500 < leases[A.mac].expiry - time.time() <= 3600


def test_names_resolve_inside_the_network(lab: Lab) -> None:
    lab.bridge()
    lab.dnsmasq().start(config())
    alpha = lab.guest(A.mac)
    assert lab.dhcp(alpha) is not None
    # bravo never took its lease: its name is served all the same.
    for name, address in ((B.name, B.ip), (f"{B.name}.lab.test", B.ip), ("gateway", GATEWAY),
                          ("gateway.lab.test", GATEWAY), (A.name, A.ip)):
        found, text = lab.lookup(alpha, name)
        assert found == [address], text
    _, text = lab.lookup(alpha, B.ip)
    assert "name = bravo.lab.test" in text
    for name in ("charlie", "charlie.lab.test"):  # unknown in the domain: never forwarded
        found, text = lab.lookup(alpha, name)
        assert found == [] and "NXDOMAIN" in text, text


def test_reload_serves_a_new_name_without_restarting(lab: Lab) -> None:
    lab.bridge()
    dnsmasq = lab.dnsmasq()
    dnsmasq.start(config(hosts=(A,)))
    pid = dnsmasq.pid()
    alpha = lab.guest(A.mac)
    bravo = lab.guest(B.mac)
    assert lab.dhcp(alpha) is not None
    assert lab.lookup(alpha, B.name)[0] == []
    assert lab.dhcp(bravo, tries=2) is None  # not known yet
    dnsmasq.reload(config(hosts=(A, B)))
    assert dnsmasq.pid() == pid
    deadline = time.monotonic() + 5  # SIGHUP is handled asynchronously
    while lab.lookup(alpha, B.name)[0] != [B.ip]:
        assert time.monotonic() < deadline, lab.lookup(alpha, B.name)[1]
        time.sleep(0.05)
    lease = lab.dhcp(bravo)
    assert lease is not None and lease["ip"] == B.ip
    assert dnsmasq.pid() == pid


def test_removed_instance_frees_its_name_and_address(lab: Lab) -> None:
    lab.bridge()
    dnsmasq = lab.dnsmasq()
    dnsmasq.start(config())
    alpha = lab.guest(A.mac)
    assert lab.dhcp(alpha) is not None
    # alpha is deleted; its address goes to a new instance at once, well within alpha's lease time.
    charlie = Host("02:00:00:77:00:0c", A.ip, "charlie")
    dnsmasq.reload(config(hosts=(B, charlie)))
    assert [lease.mac for lease in dnsmasq.leases()] == []
    bravo = lab.guest(B.mac)
    assert lab.dhcp(bravo) is not None
    assert lab.lookup(bravo, A.name)[0] == []
    assert lab.lookup(bravo, charlie.name)[0] == [A.ip]
    lease = lab.dhcp(lab.guest(charlie.mac))
    assert lease is not None and (lease["ip"], lease["hostname"]) == (A.ip, "charlie")
    # and a rename of the same NIC: the lease's old name goes too
    dnsmasq.reload(config(hosts=(B, replace(charlie, name="delta"))))
    assert lab.lookup(bravo, "charlie")[0] == []
    assert lab.lookup(bravo, "delta")[0] == [A.ip]


def test_start_is_idempotent_and_restarts_on_change(lab: Lab) -> None:
    lab.bridge()
    dnsmasq = lab.dnsmasq()
    dnsmasq.start(config(hosts=(A,)))
    pid = dnsmasq.pid()
    assert pid is not None
    dnsmasq.start(config(hosts=(A,)))
    assert dnsmasq.pid() == pid
    dnsmasq.start(config(hosts=(A, B)))  # only the hosts changed: re-read in place
    assert dnsmasq.pid() == pid
    dnsmasq.start(config(hosts=(A, B), domain="other.test"))
    new = dnsmasq.pid()
    assert new is not None and new != pid and not alive(pid)
    alpha = lab.guest(A.mac)
    lease = lab.dhcp(alpha)
    assert lease is not None and lease["domain"] == "other.test"
    assert lab.lookup(alpha, "bravo.other.test")[0] == [B.ip]


def test_recreated_bridge_gets_a_fresh_dnsmasq(lab: Lab) -> None:
    # What a reboot or a reconcile looks like: the old process is bound to a bridge that is gone.
    lab.bridge()
    dnsmasq = lab.dnsmasq()
    dnsmasq.start(config())
    pid = dnsmasq.pid()
    ip("link", "delete", "vk-t")
    lab.bridge()
    dnsmasq.start(config())
    assert dnsmasq.pid() not in (None, pid)
    lease = lab.dhcp(lab.guest(A.mac))
    assert lease is not None and lease["ip"] == A.ip


def test_isolated_network_answers_only_its_own_names(lab: Lab) -> None:
    lab.bridge()
    lab.dnsmasq().start(config(upstream=False))
    alpha = lab.guest(A.mac)
    lease = lab.dhcp(alpha)
    assert lease is not None and lease["ip"] == A.ip
    assert lease["router"] == ""  # no default route off the bridge
    assert lab.lookup(alpha, B.name)[0] == [B.ip]
    for name in ("example.com", "debian.org", "nothing", "8.8.8.8"):
        began = time.monotonic()
        found, text = lab.lookup(alpha, name)
        assert time.monotonic() - began < 2, text  # answered, not timed out waiting for an upstream
        assert found == [] and "NXDOMAIN" in text, text


def test_two_networks_side_by_side(lab: Lab) -> None:
    lab.bridge("vk-t1", "10.77.0.1/24")
    lab.bridge("vk-t2", "10.78.0.1/24")
    other = Host("02:00:00:78:00:0a", "10.78.0.10", "xray")
    first, second = lab.dnsmasq("one"), lab.dnsmasq("two")
    first.start(config(network="one", bridge="vk-t1"))
    second.start(config(network="two", bridge="vk-t2", gateway="10.78.0.1", subnet="10.78.0.0/24",
                        domain="two.test", upstream=False, hosts=(other,)))
    assert None not in (first.pid(), second.pid()) and first.pid() != second.pid()
    alpha, xray = lab.guest(A.mac, "vk-t1"), lab.guest(other.mac, "vk-t2")
    clients = [lab.dhcp_start(alpha), lab.dhcp_start(xray)]
    leases = [lab.dhcp_result(client) for client in clients]
    assert [lease and lease["ip"] for lease in leases] == [A.ip, other.ip]
    assert [lease and lease["dns"] for lease in leases] == ["10.77.0.1", "10.78.0.1"]
    assert lab.lookup(alpha, B.name)[0] == [B.ip]
    assert lab.lookup(xray, "xray", "10.78.0.1")[0] == [other.ip]
    assert lab.lookup(xray, B.name, "10.78.0.1")[0] == []  # the other network's names are not served
    assert lab.lookup(alpha, "xray")[0] == []
    first.stop()
    assert second.pid() is not None
    assert lab.lookup(xray, "xray", "10.78.0.1")[0] == [other.ip]


def test_stop_leaves_nothing(lab: Lab) -> None:
    lab.bridge()
    dnsmasq = lab.dnsmasq()
    dnsmasq.start(config())
    pid = dnsmasq.pid()
    assert pid is not None and dnsmasq.pid_file.exists()
    dnsmasq.stop()
    assert not alive(pid)
    assert dnsmasq.pid() is None and not dnsmasq.pid_file.exists()
    dnsmasq.stop()  # idempotent
    dnsmasq.start(config())  # and it starts again
    assert dnsmasq.pid() is not None


def test_lost_pidfile_is_found_again(lab: Lab) -> None:
    lab.bridge()
    dnsmasq = lab.dnsmasq()
    dnsmasq.start(config())
    pid = dnsmasq.pid()
    assert pid is not None
    dnsmasq.pid_file.unlink()
    assert dnsmasq.pid() == pid
    dnsmasq.start(config())  # no second dnsmasq fighting for the address
    assert dnsmasq.pid() == pid
    dnsmasq.stop()
    assert not alive(pid)


def test_missing_bridge_is_named(lab: Lab) -> None:
    dnsmasq = lab.dnsmasq()
    with pytest.raises(ToolError, match="bridge vk-none does not exist") as caught:
        dnsmasq.start(config(bridge="vk-none"))
    error = caught.value
    assert error.returncode == 2 and error.argv[1] == f"--conf-file={dnsmasq.config_file}"
    assert "Cannot assign requested address" in error.stderr and error.hint
    assert dnsmasq.pid() is None


def test_address_without_the_gateway_is_reported(lab: Lab) -> None:
    lab.bridge("vk-t", "10.77.0.2/24")
    with pytest.raises(ToolError, match=r"10\.77\.0\.1: Cannot assign requested address"):
        lab.dnsmasq().start(config())


def test_address_in_use_is_reported(lab: Lab) -> None:
    lab.bridge()
    lab.dnsmasq("lab").start(config())
    with pytest.raises(ToolError, match="Address already in use") as caught:
        lab.dnsmasq("copy").start(config(network="copy"))
    assert caught.value.hint and GATEWAY in caught.value.hint


def test_pidfile_of_another_process_is_not_trusted(lab: Lab) -> None:
    lab.bridge()
    dnsmasq = lab.dnsmasq()
    dnsmasq.directory.mkdir(parents=True)
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        try:
            dnsmasq.pid_file.write_text(f"{sleeper.pid}\n")
            assert dnsmasq.pid() is None
            dnsmasq.stop()
            assert sleeper.poll() is None and not dnsmasq.pid_file.exists()
            dnsmasq.pid_file.write_text(f"{sleeper.pid}\n")
            dnsmasq.start(config())  # the stale pidfile is replaced, the sleeper left alone
            assert dnsmasq.pid() not in (None, sleeper.pid)
            assert dnsmasq.pid_file.read_text().strip() == str(dnsmasq.pid())
            assert sleeper.poll() is None
        finally:
            sleeper.kill()


def test_runs_unprivileged_and_can_write_only_what_it_must(lab: Lab) -> None:
    user = daemon_user()
    if user is None:
        pytest.skip("this host has no dnsmasq or nobody user")
    lab.bridge()
    dnsmasq = lab.dnsmasq()
    dnsmasq.start(config())
    pid = dnsmasq.pid()
    assert pid is not None
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    assert status["Uid"].split() == [str(user.uid)] * 4 and status["Gid"].split() == [str(user.gid)] * 4
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:] == [
        f"--conf-file={dnsmasq.config_file}".encode(), b""]
    for path in [dnsmasq.directory, *dnsmasq.directory.iterdir()]:
        info = path.stat()
        writable = info.st_uid == user.uid or (info.st_gid == user.gid and info.st_mode & 0o020) \
            or info.st_mode & 0o002
        assert not writable, f"{path} is writable by {user.user}"
    assert dnsmasq.config_file.stat().st_mode & 0o077 == 0
    # What it must do after dropping privileges still works: the lease file and SIGHUP re-reads.
    alpha = lab.guest(A.mac)
    assert lab.dhcp(alpha) is not None
    assert [lease.mac for lease in dnsmasq.leases()] == [A.mac]
    dnsmasq.reload(config(hosts=(A,)))
    deadline = time.monotonic() + 5
    while lab.lookup(alpha, B.name)[0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "failed" not in dnsmasq.log_file.read_text().lower()
