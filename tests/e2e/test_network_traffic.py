"""Instances on virtkit networks, proven with real traffic: DHCP leases and names, NAT to a stand-in
internet, isolation between networks and from isolated networks, published ports, anti-spoofing.
Every instance here is a tiny container (fast) except the VM that proves a VM and a container share
a network."""

from __future__ import annotations

import json
import subprocess

from tests.e2e.netlab import UPLINK_HOST, UPLINK_INTERNET, Lab, lab, tcp_server  # noqa: F401

# Seconds a reply may take (what must get through), and seconds of silence that say a packet was
# dropped (what must not): on one host's bridges an answer comes in milliseconds, even under load.
ANSWER = 5
SILENCE = 1


def _ping(lab: Lab, name: str, address: str, wait: int = 2) -> bool:  # noqa: F811
    return lab.exec(name, f"ping -c 1 -W {wait} {address}").returncode == 0


def _unpingable(lab: Lab, name: str, address: str) -> bool:  # noqa: F811
    return not _ping(lab, name, address, wait=SILENCE)


def _tcp(lab: Lab, name: str, address: str, port: int, wait: int = ANSWER) -> str:  # noqa: F811
    """What a TCP connection from `name` to address:port reads ("" when it fails)."""
    done = lab.exec(name, f"echo | timeout {wait} nc {address} {port}")
    return done.stdout if done.returncode == 0 else ""


def _tcp_dropped(lab: Lab, name: str, address: str, port: int) -> bool:  # noqa: F811
    """No answer to a TCP connection from `name` to address:port within SILENCE + 1 s."""
    return _tcp(lab, name, address, port, wait=SILENCE + 1) == ""


def _in_netns_of(lab: Lab, name: str, code: str) -> subprocess.Popen[str]:  # noqa: F811
    """Host Python run in the network namespace of instance `name` (busybox nc has no UDP): its
    packets leave through the instance's own NIC, as the instance's would."""
    pid = lab.show(name)["pid"]
    return subprocess.Popen(["nsenter", "-t", str(pid), "-n", "python3", "-c", code], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _udp_reaches(lab: Lab, sender: str, receiver: str, address: str) -> bool:  # noqa: F811
    listen = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 5353))\n"
        "s.settimeout(60)\nprint('ready', flush=True)\n"
        "try:\n    print(s.recv(100).decode())\nexcept OSError:\n    print('nothing')\n"
    )
    receiving = _in_netns_of(lab, receiver, listen)
    assert receiving.stdout is not None and receiving.stdout.readline().strip() == "ready"
    send = (
        "import socket\n"
        f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'datagram', ({address!r}, 5353))"
    )
    _in_netns_of(lab, sender, send).wait(10)
    try:  # sent: a datagram let through is there at once
        out, _ = receiving.communicate(timeout=SILENCE + 1)
    except subprocess.TimeoutExpired:
        receiving.kill()
        out, _ = receiving.communicate()
    return "datagram" in out


def test_a_vm_and_a_container_share_a_network(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "lan", "--subnet", "10.20.30.0/24")
    lab.ok("launch", "tiny", "vm1", "--vm", "--network", "lan", "--wait", timeout=180)
    lab.ok("launch", "tiny", "c1", "--container", "--network", "lan,ip=10.20.30.50", "--wait")
    vm_ip, c_ip = lab.wait_address("vm1"), lab.wait_address("c1")
    assert c_ip == "10.20.30.50"
    listed = lab.ok("list").stdout
    assert f"{vm_ip} (eth0)" in listed and "10.20.30.50 (eth0)" in listed
    leases = json.loads(lab.ok("network", "show", "lan", "--json").stdout)["leases"]
    assert {lease["ip"] for lease in leases} == {vm_ip, c_ip}, leases

    # names resolve through the network's dnsmasq, both ways
    found = lab.exec("c1", "nslookup vm1 10.20.30.1")
    assert vm_ip in found.stdout, found.stdout + found.stderr
    assert c_ip in lab.exec("vm1", "nslookup c1.virtkit 10.20.30.1").stdout
    assert _ping(lab, "c1", vm_ip) and _ping(lab, "vm1", c_ip)
    lab.exec("vm1", "nc -l -p 7000 -e echo from-vm1 </dev/null >/dev/null 2>&1 & sleep 0.5")
    assert "from-vm1" in _tcp(lab, "c1", vm_ip, 7000)


def test_networks_are_isolated_from_each_other(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "red", "--subnet", "10.20.1.0/24")
    lab.ok("network", "create", "blue", "--subnet", "10.20.2.0/24")
    lab.ok("launch", "tiny", "r1", "--network", "red", "--wait")
    lab.ok("launch", "tiny", "b1", "--network", "blue", "--wait")
    r_ip, b_ip = lab.wait_address("r1"), lab.wait_address("b1")
    assert _ping(lab, "r1", "10.20.1.1") and _ping(lab, "b1", "10.20.2.1")  # each its own gateway
    assert _unpingable(lab, "r1", b_ip) and _unpingable(lab, "b1", r_ip)
    lab.exec("b1", "nc -l -p 7000 -e echo secret </dev/null >/dev/null 2>&1 & sleep 0.3")
    assert _tcp_dropped(lab, "r1", b_ip, 7000)
    lab.exec("r1", "nc -l -p 7000 -e echo secret </dev/null >/dev/null 2>&1 & sleep 0.3")
    assert _tcp_dropped(lab, "b1", r_ip, 7000)
    assert not _udp_reaches(lab, "r1", "b1", b_ip)
    assert not _udp_reaches(lab, "b1", "r1", r_ip)
    # nor the other network's gateway: the host routes between its bridges, virtkit does not
    assert _unpingable(lab, "r1", "10.20.2.1")


def test_nat_reaches_the_internet_and_isolated_does_not(lab: Lab) -> None:  # noqa: F811
    server = tcp_server(lab.internet, UPLINK_INTERNET, 8000, reply="internet")
    try:
        lab.ok("network", "create", "out", "--subnet", "10.20.1.0/24")
        lab.ok("network", "create", "closed", "--type", "isolated", "--subnet", "10.20.2.0/24")
        lab.ok("launch", "tiny", "n1", "--network", "out", "--wait")
        lab.ok("launch", "tiny", "i1", "--network", "closed", "--wait")
        lab.wait_address("n1")
        lab.wait_address("i1")
        answer = _tcp(lab, "n1", UPLINK_INTERNET, 8000)
        assert answer.strip() == f"internet {UPLINK_HOST}", answer  # masqueraded behind the host
        assert _tcp_dropped(lab, "i1", UPLINK_INTERNET, 8000)
        assert _unpingable(lab, "i1", UPLINK_INTERNET)
        assert _ping(lab, "i1", "10.20.2.1")  # DHCP/DNS/ping on its own gateway still work
        route = lab.exec("i1", "ip route").stdout
        assert "default" not in route, route  # an isolated network gives no way out
        # neither reaches the host's own services, unless asked
        host_service = tcp_server(lab.host, "0.0.0.0", 9000, reply="host")
        try:
            assert _tcp_dropped(lab, "n1", "10.20.1.1", 9000)
            assert _tcp_dropped(lab, "n1", UPLINK_HOST, 9000)
            lab.ok("launch", "tiny", "n2", "--network", "out", "--allow-host", "--wait")
            lab.wait_address("n2")
            assert "host" in _tcp(lab, "n2", "10.20.1.1", 9000)
        finally:
            host_service.kill()
    finally:
        server.kill()


def test_a_published_port_answers_from_outside_and_from_the_host(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "web", "--subnet", "10.20.30.0/24")
    lab.ok("launch", "tiny", "w1", "--network", "web", "--publish", "8080:80", "--wait")
    ip = lab.wait_address("w1")
    lab.exec("w1", "nc -ll -p 80 -e echo served-by-w1 </dev/null >/dev/null 2>&1 & sleep 0.3")
    outside = lab.internet.run(["sh", "-c", f"echo | timeout 5 busybox nc {UPLINK_HOST} 8080"])
    assert "served-by-w1" in outside.stdout, outside
    on_host = lab.host.run(["sh", "-c", "echo | timeout 5 busybox nc 10.20.30.1 8080"])
    assert "served-by-w1" in on_host.stdout, on_host
    listed = lab.ok("network", "forward", "list", "web").stdout
    assert "8080/tcp" in listed and "w1" in listed
    lab.ok("network", "forward", "add", "web", "5353/udp", "w1:53")
    refused = lab.virtkit("network", "forward", "add", "web", "8080", "w1:81")
    assert refused.returncode == 1 and "already forwarded" in refused.stderr
    lab.ok("network", "forward", "remove", "web", "8080")
    gone = lab.internet.run(["sh", "-c", f"echo | timeout 3 busybox nc {UPLINK_HOST} 8080"])
    assert "served-by-w1" not in gone.stdout
    assert ip


def test_an_instance_that_spoofs_its_addresses_loses_connectivity(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "lan", "--subnet", "10.20.30.0/24")
    lab.ok("launch", "tiny", "honest", "--network", "lan", "--wait")
    lab.ok("launch", "tiny", "liar", "--network", "lan", "--wait")
    honest_ip, liar_ip = lab.wait_address("honest"), lab.wait_address("liar")
    assert _ping(lab, "liar", honest_ip) and _ping(lab, "liar", "10.20.30.1")
    # another IP: nothing gets through
    lab.exec("liar", "killall udhcpc; ip addr flush dev eth0; ip addr add 10.20.30.99/24 dev eth0")
    assert _unpingable(lab, "liar", honest_ip) and _unpingable(lab, "liar", "10.20.30.1")
    # its own IP back, but another MAC: nothing gets through either
    lab.exec("liar", f"ip addr flush dev eth0; ip link set eth0 address 52:54:00:66:66:66; "
             f"ip addr add {liar_ip}/24 dev eth0; ip route add default via 10.20.30.1")  # fmt: skip
    assert _unpingable(lab, "liar", honest_ip) and _unpingable(lab, "liar", "10.20.30.1")
    assert _ping(lab, "honest", "10.20.30.1")  # the honest one is unaffected
