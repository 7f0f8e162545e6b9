"""Networks through an instance's life, as a user types it: NICs attached and detached (stopped and
running instances), the `default` network made on first use, a host reboot survived, an e1000 NIC,
and a foreign firewall (Docker's) left as it was. Everything runs in the e2e network lab."""

from __future__ import annotations

import json
import os
import subprocess
import time

from tests.e2e.conftest import VIRTKIT
from tests.e2e.netlab import UPLINK_HOST, UPLINK_INTERNET, Lab, lab, tcp_server  # noqa: F401

# Docker's firewall as iptables-nft makes it: forwarded packets dropped unless a rule accepts them
FOREIGN = (
    "table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward priority 0; policy drop;\n\t}\n}\n"
)


def _ping(lab: Lab, name: str, address: str) -> bool:  # noqa: F811
    return lab.exec(name, f"ping -c 1 -W 2 {address}").returncode == 0


def _tcp(lab: Lab, name: str, address: str, port: int, wait: int = 5) -> str:  # noqa: F811
    """What a TCP connection from `name` to address:port reads ("" when it fails within `wait` s)."""
    done = lab.exec(name, f"echo | timeout {wait} nc {address} {port}")
    return done.stdout if done.returncode == 0 else ""


def _nics(lab: Lab, name: str) -> list[dict[str, str]]:  # noqa: F811
    nics = lab.show(name)["nics"]
    assert isinstance(nics, list)
    return nics


def _leases(lab: Lab, network: str) -> dict[str, str]:  # noqa: F811
    """MAC -> IP of the leases `virtkit network show` reports."""
    shown = json.loads(lab.ok("network", "show", network, "--json").stdout)
    return {lease["mac"]: lease["ip"] for lease in shown["leases"]}


def _wait_lease(lab: Lab, network: str, mac: str, ip: str, timeout: float = 30) -> None:  # noqa: F811
    deadline = time.monotonic() + timeout
    while (leases := _leases(lab, network)).get(mac) != ip:
        assert time.monotonic() < deadline, f"no lease of {ip} to {mac} on {network}: {leases}"
        time.sleep(0.3)


def _inner_address(lab: Lab, name: str, ifname: str, timeout: float = 30) -> str:  # noqa: F811
    """The IPv4 address (with its prefix) `ifname` holds inside instance `name`, once it has one."""
    deadline = time.monotonic() + timeout
    while True:
        shown = lab.exec(name, f"ip -4 -o addr show dev {ifname}", timeout=30)
        words = shown.stdout.split()
        if "inet" in words:
            return words[words.index("inet") + 1]
        assert time.monotonic() < deadline, f"{name}'s {ifname} never got an address: {shown}"
        time.sleep(0.3)


def _listed_ips(lab: Lab, name: str) -> list[str]:  # noqa: F811
    """The NIC addresses `virtkit list` gives for instance `name`."""
    listed = json.loads(lab.ok("list", "--json").stdout)
    return [nic["ip"] for instance in listed if instance["name"] == name for nic in instance["nics"]]


def _popen(lab: Lab, *args: str) -> subprocess.Popen[str]:  # noqa: F811
    """`virtkit ARGS` started in the lab's host namespace, not waited for."""
    env = {**os.environ, "VIRTKIT_ROOT": str(lab.root)}
    return subprocess.Popen(lab.host.argv([str(VIRTKIT), *args]), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _refused(lab: Lab, args: tuple[str, ...], words: str) -> None:  # noqa: F811
    """`virtkit ARGS` fails with a one- or two-line error saying `words`."""
    done = lab.virtkit(*args)
    assert done.returncode != 0, f"virtkit {' '.join(args)} should be refused: {done.stdout}"
    assert done.stderr.startswith("Error: ") and "Traceback" not in done.stderr, done.stderr
    assert words in done.stderr and len(done.stderr.strip().splitlines()) <= 2, done.stderr


def _host_link(lab: Lab, device: str) -> dict[str, object] | None:  # noqa: F811
    shown = lab.host.run(["ip", "-j", "link", "show", "dev", device])
    if shown.returncode != 0:
        return None
    found: list[dict[str, object]] = json.loads(shown.stdout)
    return found[0]


def test_a_stopped_container_gets_and_loses_a_nic_at_its_next_start(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "lan", "--subnet", "10.30.1.0/24")
    _refused(lab, ("create", "tiny", "c1", "--container", "--network", "lan,model=e1000"), "has no model")
    lab.ok("create", "tiny", "c1", "--container")
    _refused(lab, ("network", "attach", "lan", "c1", "--model", "virtio"), "has no model")
    attached = lab.ok("network", "attach", "lan", "c1", "--ip", "10.30.1.40")
    assert "attached to lan as eth0: 10.30.1.40" in attached.stdout, attached.stdout
    (nic,) = _nics(lab, "c1")
    assert (nic["network"], nic["ip"], nic["inner"]) == ("lan", "10.30.1.40", "eth0"), nic
    assert "10.30.1.40 (eth0)" in lab.ok("list").stdout, "list shows the NIC of a stopped instance"

    lab.ok("start", "c1", "--wait")
    assert lab.wait_address("c1") == "10.30.1.40"
    _wait_lease(lab, "lan", nic["mac"], "10.30.1.40")
    assert _ping(lab, "c1", "10.30.1.1"), "c1 reaches its gateway on lan"
    link = _host_link(lab, nic["device"])
    assert link is not None and link.get("master") == "vk-lan", f"{nic['device']} on vk-lan: {link}"

    lab.ok("stop", "c1")
    detached = lab.ok("network", "detach", "lan", "c1")
    assert "detached from lan (eth0, 10.30.1.40)" in detached.stdout, detached.stdout
    assert _nics(lab, "c1") == [], "show lists no NIC once detached"
    assert "10.30.1.40" not in lab.ok("list").stdout
    shown = json.loads(lab.ok("network", "show", "lan", "--json").stdout)
    assert shown["instances"] == [], f"nothing on lan any more: {shown['instances']}"
    lab.ok("start", "c1", "--wait")
    links = lab.exec("c1", "ls /sys/class/net").stdout.split()
    assert links == ["lo"], f"c1 started without its NIC has only lo: {links}"
    assert _host_link(lab, nic["device"]) is None, f"no {nic['device']} on the host"


def test_a_running_container_gets_and_loses_a_nic_at_once(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "lan", "--subnet", "10.30.1.0/24")
    lab.ok("network", "create", "side", "--type", "isolated", "--subnet", "10.30.2.0/24")
    lab.ok("launch", "tiny", "s1", "--network", "side", "--wait")
    lab.ok("launch", "tiny", "c1", "--network", "lan", "--wait")
    lab.wait_address("c1")
    s1_ip = lab.wait_address("s1")

    attached = lab.ok("network", "attach", "side", "c1")
    nic = _nics(lab, "c1")[1]
    assert (nic["network"], nic["inner"]) == ("side", "eth1"), nic
    assert f"as eth1: {nic['ip']}" in attached.stdout, attached.stdout
    assert _inner_address(lab, "c1", "eth1") == f"{nic['ip']}/24", "eth1 holds the address show gives"
    assert _ping(lab, "c1", "10.30.2.1"), "c1 reaches side's gateway through its new eth1"
    assert _ping(lab, "c1", s1_ip) and _ping(lab, "s1", nic["ip"]), "c1 and s1 reach each other on side"
    assert _ping(lab, "c1", "10.30.1.1"), "c1 still reaches lan's gateway"
    route = lab.exec("c1", "ip route | grep ^default").stdout
    assert route == "default via 10.30.1.1 dev eth0 \n", f"the default route stays on eth0: {route!r}"
    link = _host_link(lab, nic["device"])
    assert link is not None and link.get("master") == "vk-side", f"{nic['device']} on vk-side: {link}"
    assert _listed_ips(lab, "c1")[1] == nic["ip"], "list gives the new NIC's address"
    users = json.loads(lab.ok("network", "show", "side", "--json").stdout)["instances"]
    assert sorted(u["instance"] for u in users) == ["c1", "s1"], users
    assert nic["device"] in lab.host.run(["nft", "list", "table", "bridge", "virtkit"]).stdout
    lab.ok("restart", "c1", "--wait")  # the hot-plugged NIC is c1's for good: its DHCP client takes it
    _wait_lease(lab, "side", nic["mac"], nic["ip"])
    assert _inner_address(lab, "c1", "eth1") == f"{nic['ip']}/24"
    assert _ping(lab, "c1", s1_ip), "c1 reaches s1 on side after its restart"

    detached = lab.ok("network", "detach", "side", "c1")
    assert "detached from side (eth1" in detached.stdout, detached.stdout
    inside = lab.exec("c1", "ls /sys/class/net").stdout.split()
    assert sorted(inside) == ["eth0", "lo"], f"eth1 is gone from c1: {inside}"
    assert _host_link(lab, nic["device"]) is None, f"the veth {nic['device']} is gone from the host"
    assert nic["device"] not in lab.host.run(["nft", "list", "ruleset"]).stdout, "its rules are gone"
    assert [n["network"] for n in _nics(lab, "c1")] == ["lan"]
    assert not _ping(lab, "s1", nic["ip"]), "its old address answers no more"
    assert _ping(lab, "c1", "10.30.1.1"), "eth0 is unaffected"


def _guest_nics(lab: Lab, name: str) -> dict[str, tuple[str, str]]:  # noqa: F811
    """MAC -> (interface name, driver) of the instance's NICs, as its kernel sees them."""
    script = ("for d in /sys/class/net/*; do [ -e $d/device ] && echo ${d##*/} $(cat $d/address) "
              "$(basename $(readlink $d/device/driver)); done")  # fmt: skip
    lines = lab.exec(name, script).stdout.splitlines()
    return {mac: (ifname, driver) for ifname, mac, driver in (line.split() for line in lines)}


def test_a_stopped_vm_gets_an_e1000_nic_and_an_attached_one_at_its_next_start(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "lan", "--subnet", "10.30.1.0/24")
    lab.ok("network", "create", "side", "--type", "isolated", "--subnet", "10.30.2.0/24")
    _refused(lab, ("create", "tiny", "vm2", "--vm", "--network", "lan,model=e1000"), "needs a PCI machine")
    lab.ok("create", "tiny", "vm2", "--vm")  # microvm: no PCI, no e1000
    _refused(lab, ("network", "attach", "lan", "vm2", "--model", "e1000"), "needs a PCI machine")
    assert _nics(lab, "vm2") == [], "a refused attach leaves vm2 as it was"
    lab.ok("create", "tiny", "vm1", "--vm", "--machine", "q35", "--network", "side")
    attached = lab.ok("network", "attach", "lan", "vm1", "--model", "e1000")
    assert "attached to lan as eth1" in attached.stdout, attached.stdout
    side, lan = _nics(lab, "vm1")
    assert (side["model"], lan["model"]) == (None, "e1000"), "virtio as --devices says; e1000 as asked"
    assert "-device e1000" in lab.ok("show", "vm1", "--runtime").stdout, "QEMU gets an e1000 NIC"

    lab.ok("start", "vm1", "--wait", timeout=180)
    _wait_lease(lab, "lan", lan["mac"], lan["ip"])
    _wait_lease(lab, "side", side["mac"], side["ip"])
    guest = _guest_nics(lab, "vm1")
    assert guest.get(lan["mac"], ("", ""))[1] == "e1000", f"the guest drives lan's NIC with e1000: {guest}"
    assert guest.get(side["mac"], ("", ""))[1] == "virtio_net", f"and side's with virtio_net: {guest}"
    assert _inner_address(lab, "vm1", guest[lan["mac"]][0]) == f"{lan['ip']}/24", "e1000 holds its lease"
    assert _ping(lab, "vm1", "10.30.1.1") and _ping(lab, "vm1", "10.30.2.1"), "vm1 reaches both gateways"
    assert _listed_ips(lab, "vm1") == [side["ip"], lan["ip"]], "list gives both NICs' addresses"

    lab.ok("stop", "vm1")
    lab.ok("network", "detach", "side", "vm1")
    assert [n["network"] for n in _nics(lab, "vm1")] == ["lan"], "show lists lan's NIC only"
    assert side["mac"] not in lab.ok("show", "vm1", "--runtime").stdout, "QEMU gets side's NIC no more"
    lab.ok("start", "vm1", "--wait", timeout=180)
    guest = _guest_nics(lab, "vm1")
    assert list(guest) == [lan["mac"]], f"vm1 has its e1000 NIC only: {guest}"
    assert _inner_address(lab, "vm1", guest[lan["mac"]][0]) == f"{lan['ip']}/24", "with its lease"
    assert _ping(lab, "vm1", "10.30.1.1"), "and it still reaches lan's gateway"
    assert side["ip"] not in _leases(lab, "side").values(), "side's dnsmasq forgot vm1's lease"


def test_the_default_network_is_made_on_first_use_where_the_host_routes_nothing(lab: Lab) -> None:  # noqa: F811
    # The host already routes the first candidate, and an address of the second is its own.
    lab.host.run(["ip", "route", "add", "10.161.0.0/24", "via", UPLINK_INTERNET], check=True)
    lab.host.run(["ip", "addr", "add", "10.161.1.200/28", "dev", "up0"], check=True)
    assert lab.ok("network", "list", "--json").stdout.strip() == "[]"
    # two first uses at once: one network made, both instances on it
    other = _popen(lab, "create", "tiny", "d2", "--container", "--network", "default")
    lab.ok("launch", "tiny", "d1", "--network", "default", "--wait")
    _, err = other.communicate(timeout=60)
    assert other.returncode == 0, f"a concurrent first use of default failed: {err}"
    (made,) = json.loads(lab.ok("network", "list", "--json").stdout)
    assert (made["name"], made["type"], made["subnet"], made["gateway"], made["state"]) == (
        "default",
        "nat",
        "10.161.2.0/24",
        "10.161.2.1",
        "up",
    ), f"default: nat, on the first 10.161.x.0/24 the host does not route: {made}"
    ip = lab.wait_address("d1")
    assert ip.startswith("10.161.2."), ip
    server = tcp_server(lab.internet, UPLINK_INTERNET, 8000, reply="internet")
    try:
        answer = _tcp(lab, "d1", UPLINK_INTERNET, 8000)
    finally:
        server.kill()
    assert answer.strip() == f"internet {UPLINK_HOST}", f"d1 reaches the internet, masqueraded: {answer!r}"
    assert lab.nic_ip("d2").startswith("10.161.2."), "d2 is on the same default network"


def _reboot(lab: Lab) -> None:  # noqa: F811
    """What a host reboot takes from a stopped virtkit: bridges, tables, dnsmasq, IP forwarding."""
    for bridge in ("vk-out", "vk-spare"):
        lab.host.run(["ip", "link", "del", bridge], check=True)
    for family in ("inet", "bridge"):
        lab.host.run(["nft", "delete", "table", family, "virtkit"], check=True)
    for pidfile in lab.root.glob("networks/*/dnsmasq.pid"):
        os.kill(int(pidfile.read_text().strip()), 9)
    lab.host.run(["sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True)
    states = {n["name"]: n["state"] for n in json.loads(lab.ok("network", "list", "--json").stdout)}
    assert states == {"out": "down", "spare": "down"}, f"list sees the networks down: {states}"


def _ruleset(lab: Lab) -> str:  # noqa: F811
    """The whole ruleset, counters left out."""
    return lab.host.run(["nft", "-s", "list", "ruleset"], check=True).stdout


def test_a_start_alone_brings_back_what_a_host_reboot_took(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "out", "--subnet", "10.30.1.0/24")
    lab.ok("network", "create", "spare", "--type", "isolated", "--subnet", "10.30.2.0/24")
    lab.ok("launch", "tiny", "r1", "--network", "out", "--publish", "8080:80", "--wait")
    ip = lab.wait_address("r1")
    booted = _ruleset(lab)
    lab.ok("stop", "r1")
    _reboot(lab)

    lab.ok("start", "r1", "--wait")
    shown = json.loads(lab.ok("network", "show", "out", "--json").stdout)
    assert shown["state"] == "up", f"start brought out's bridge and dnsmasq back: {shown}"
    addr = lab.host.run(["ip", "-4", "-o", "addr", "show", "dev", "vk-out"]).stdout
    assert " 10.30.1.1/24 " in addr, f"vk-out carries the gateway again: {addr!r}"
    assert _ruleset(lab) == booted, "start brought virtkit's tables back as they were"
    assert lab.wait_address("r1") == ip, "r1 gets its same address"
    server = tcp_server(lab.internet, UPLINK_INTERNET, 8000, reply="internet")
    try:
        answer = _tcp(lab, "r1", UPLINK_INTERNET, 8000)
    finally:
        server.kill()
    assert answer.strip() == f"internet {UPLINK_HOST}", f"r1 reaches the internet again: {answer!r}"
    lab.exec("r1", "nc -ll -p 80 -e echo served-by-r1 </dev/null >/dev/null 2>&1 & sleep 0.3")
    outside = lab.internet.run(["sh", "-c", f"echo | timeout 5 busybox nc {UPLINK_HOST} 8080"])
    assert "served-by-r1" in outside.stdout, f"its published port answers again: {outside}"

    repaired = lab.ok("network", "reconcile").stdout
    assert "spare: bridge and dnsmasq restored" in repaired, f"reconcile repairs unused networks: {repaired}"
    first = _ruleset(lab)
    again = lab.ok("network", "reconcile").stdout
    assert again == "Networks reconciled: nothing to repair.\n", f"the second one repairs nothing: {again}"
    assert _ruleset(lab) == first, "a second reconcile leaves the ruleset as the first made it"
    states = {n["name"]: n["state"] for n in json.loads(lab.ok("network", "list", "--json").stdout)}
    assert states == {"out": "up", "spare": "up"}, states


def test_a_foreign_forward_drop_is_opened_for_virtkit_and_left_as_it_was(lab: Lab) -> None:  # noqa: F811
    lab.host.run(["nft", "-f", "-"], input=FOREIGN, check=True)
    foreign = lab.host.run(["nft", "-s", "list", "table", "ip", "filter"], check=True).stdout
    assert "policy drop" in foreign, foreign
    lab.ok("network", "create", "lan", "--subnet", "10.30.1.0/24")
    lab.ok("launch", "tiny", "f1", "--network", "lan", "--wait")
    lab.ok("launch", "tiny", "f2", "--network", "lan", "--wait")
    f1, f2 = lab.wait_address("f1"), lab.wait_address("f2")
    server = tcp_server(lab.internet, UPLINK_INTERNET, 8000, reply="internet")
    try:
        answer = _tcp(lab, "f1", UPLINK_INTERNET, 8000)
        assert answer.strip() == f"internet {UPLINK_HOST}", f"f1 gets past the foreign drop: {answer!r}"
        assert _ping(lab, "f1", f2) and _ping(lab, "f2", f1), "f1 and f2 reach each other on lan"
        assert _ping(lab, "f1", "10.30.1.1"), "f1 reaches its gateway"
        opened = lab.host.run(["nft", "-s", "list", "table", "ip", "filter"], check=True).stdout
        ours = sorted(line.strip() for line in opened.splitlines() if line not in foreign.splitlines())
        wanted = [f'{key} "vk-lan" accept comment "virtkit"' for key in ("iifname", "oifname")]
        assert ours == wanted, f"virtkit adds only its accept rules to the foreign chain: {opened}"
        # Docker restarted: its table made anew, without our rules; reconcile opens it again
        lab.host.run(["nft", "delete", "table", "ip", "filter"], check=True)
        lab.host.run(["nft", "-f", "-"], input=FOREIGN, check=True)
        assert _tcp(lab, "f1", UPLINK_INTERNET, 8000, wait=2) == "", "the new foreign drop drops f1's traffic"
        said = lab.ok("network", "reconcile").stdout
        assert "ip filter FORWARD (policy drop) opened to virtkit bridges again" in said, said
        answer = _tcp(lab, "f1", UPLINK_INTERNET, 8000)
        assert answer.strip() == f"internet {UPLINK_HOST}", f"reconcile opens it again: {answer!r}"
        assert lab.host.run(["nft", "-s", "list", "table", "ip", "filter"], check=True).stdout == opened
    finally:
        server.kill()
    for name in ("f1", "f2"):
        lab.ok("delete", "--force", name)
    lab.ok("network", "delete", "lan")
    after = lab.host.run(["nft", "-s", "list", "ruleset"], check=True).stdout
    assert after == foreign, f"the foreign table is left as it was, and nothing else: {after}"


def test_the_default_route_and_dns_stay_with_the_first_nat_nic(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "lan", "--subnet", "10.30.1.0/24")
    lab.ok("network", "create", "wan", "--subnet", "10.30.2.0/24")
    names = ("m1", "m2", "m3")
    for name in names:
        lab.ok("launch", "tiny", name, "--network", "lan", "--network", "wan")
    seen = {}
    for name in names:
        lab.wait_address(name)
        _inner_address(lab, name, "eth1")
        script = "sleep 0.3; ip route | grep ^default; grep nameserver /etc/resolv.conf"
        seen[name] = lab.exec(name, script).stdout
    wanted = "default via 10.30.1.1 dev eth0 \nnameserver 10.30.1.1\n"
    assert all(said == wanted for said in seen.values()), f"the default route and DNS of eth0 (lan): {seen}"
