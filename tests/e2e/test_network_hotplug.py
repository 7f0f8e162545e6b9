"""NICs attached to and detached from running VMs, as a user types it, proven inside the guest: a q35
VM gets a hot-plugged NIC that takes a DHCP lease on the new network and pings its gateway, loses it
again (gone in the guest, its tap gone from the host, gone from `virtkit show`), and keeps its NIC
list across restarts. Bad input and a microvm VM (no hot-plug there) change nothing at all.

The tiny guest's mdev starts a DHCP client for a hot-plugged NIC by itself: nothing is asked for here."""

from __future__ import annotations

import json
import re
import time

from tests.e2e.netlab import Lab, lab  # noqa: F401

GATEWAY_A, GATEWAY_B = "10.20.1.1", "10.20.2.1"


def _networks(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "a", "--subnet", "10.20.1.0/24")
    lab.ok("network", "create", "b", "--subnet", "10.20.2.0/24")


def _interface(lab: Lab, name: str, mac: str) -> str | None:  # noqa: F811
    """The guest's name for its interface with `mac` (None: it has none)."""
    script = f'for d in /sys/class/net/*; do [ "$(cat $d/address)" = {mac} ] && echo ${{d##*/}}; done; true'
    found = lab.exec(name, script)
    assert found.returncode == 0, found.stderr
    return found.stdout.strip() or None


def _wait_interface(lab: Lab, name: str, mac: str, *, present: bool, timeout: float = 20) -> str | None:  # noqa: F811
    deadline = time.monotonic() + timeout
    while True:
        ifname = _interface(lab, name, mac)
        if (ifname is not None) == present or time.monotonic() > deadline:
            return ifname
        time.sleep(0.3)


def _wait_addresses(lab: Lab, name: str, ips: list[str], timeout: float = 40) -> str:  # noqa: F811
    """Until the guest holds every address of `ips` (its DHCP client at boot got the leases)."""
    deadline = time.monotonic() + timeout
    said = ""
    while time.monotonic() < deadline:
        said = lab.exec(name, "ip -4 -o addr", timeout=30).stdout
        if all(f" {ip}/" in said for ip in ips):
            return said
        time.sleep(0.5)
    raise AssertionError(f"{name} never held {ips}: {said}")


def _ping(lab: Lab, name: str, address: str) -> bool:  # noqa: F811
    return lab.exec(name, f"ping -c 1 -W 2 {address}").returncode == 0


def _host_link(lab: Lab, device: str) -> dict[str, object] | None:  # noqa: F811
    shown = lab.host.run(["ip", "-j", "link", "show", "dev", device])
    if shown.returncode != 0:
        return None
    found: dict[str, object] = json.loads(shown.stdout)[0]
    return found


def _nics(lab: Lab, name: str) -> list[dict[str, str]]:  # noqa: F811
    nics = lab.show(name)["nics"]
    assert isinstance(nics, list)
    return nics


def _attach(lab: Lab, name: str) -> dict[str, str]:  # noqa: F811
    nic: dict[str, str] = json.loads(lab.ok("network", "attach", "b", name, "--json").stdout)
    return nic


def test_a_running_vm_gets_a_nic_and_loses_it_and_keeps_its_list_across_restarts(lab: Lab) -> None:  # noqa: F811
    _networks(lab)
    lab.ok("launch", "tiny", "vm1", "--vm", "--machine", "q35", "--network", "a", "--wait", timeout=180)
    ip_a = lab.wait_address("vm1")

    # attached while it runs: a second interface appears, takes its lease on b, reaches b's gateway
    nic = _attach(lab, "vm1")
    assert nic["network"] == "b" and nic["ip"].startswith("10.20.2.")
    ifname = _wait_interface(lab, "vm1", nic["mac"], present=True)
    assert ifname is not None and ifname != "eth0", f"no interface with {nic['mac']} in the guest"
    _wait_addresses(lab, "vm1", [ip_a, nic["ip"]])  # the guest asked for its lease on its own
    assert _ping(lab, "vm1", GATEWAY_B) and _ping(lab, "vm1", GATEWAY_A)
    tap = _host_link(lab, nic["device"])
    assert tap is not None and tap.get("master") == "vk-b"
    assert [n["network"] for n in _nics(lab, "vm1")] == ["a", "b"]
    runtime = lab.ok("show", "vm1", "--runtime").stdout
    assert f"nic-{nic['device']}" in runtime and "bus=rp1" in runtime  # its next start has it too

    # detached while it runs: gone in the guest, on the host, in the record and the runtime
    lab.ok("network", "detach", "b", "vm1")
    assert _interface(lab, "vm1", nic["mac"]) is None  # the detach returns once the guest let it go
    assert _host_link(lab, nic["device"]) is None
    assert [n["network"] for n in _nics(lab, "vm1")] == ["a"]
    assert nic["device"] not in lab.ok("show", "vm1", "--runtime").stdout
    assert _ping(lab, "vm1", GATEWAY_A)

    # attached again, then restarted: both NICs come back, each with its lease from the boot's DHCP
    nic = _attach(lab, "vm1")
    assert _wait_interface(lab, "vm1", nic["mac"], present=True) is not None
    lab.ok("restart", "vm1", "--wait", timeout=180)
    _wait_addresses(lab, "vm1", [ip_a, nic["ip"]])
    assert _ping(lab, "vm1", GATEWAY_B)

    # a NIC the VM started with comes out as well, and a restart does not bring it back
    lab.ok("network", "detach", "b", "vm1")
    assert _interface(lab, "vm1", nic["mac"]) is None and _host_link(lab, nic["device"]) is None
    lab.ok("restart", "vm1", "--wait", timeout=180)
    lab.wait_address("vm1")
    assert _interface(lab, "vm1", nic["mac"]) is None
    assert [n["network"] for n in _nics(lab, "vm1")] == ["a"]
    listed = lab.exec("vm1", "ls /sys/class/net").stdout.split()
    assert sorted(listed) == ["eth0", "lo"], listed


def _unchanged(lab: Lab, name: str) -> tuple[object, ...]:  # noqa: F811
    """What a refused attach or detach must leave as it was: host networking, the record's NICs,
    the saved runtime, the guest's interfaces. The firewall's counters are left out: the guest's
    own IPv6 chatter is counted as it goes (dropped by anti-spoofing)."""
    snapshot = lab.snapshot()
    snapshot["nft"] = re.sub(r"counter packets \d+ bytes \d+", "counter", str(snapshot["nft"]))
    return (
        snapshot,
        _nics(lab, name),
        lab.ok("show", name, "--runtime").stdout,
        lab.exec(name, "ls /sys/class/net").stdout,
    )


def test_bad_attach_and_detach_change_nothing(lab: Lab) -> None:  # noqa: F811
    _networks(lab)
    lab.ok("launch", "tiny", "vm1", "--vm", "--machine", "q35", "--network", "a", "--wait", timeout=180)
    lab.wait_address("vm1")
    before = _unchanged(lab, "vm1")
    for args, said in (
        (("attach", "nosuch", "vm1"), "network 'nosuch' not found"),
        (("attach", "a", "vm1"), "vm1 already has a NIC on network 'a'"),
        (("detach", "b", "vm1"), "instance 'vm1' has no NIC on network 'b'"),
        (("attach", "b", "nosuch"), "not found"),
    ):
        done = lab.virtkit("network", *args)
        assert done.returncode != 0 and said in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2, done.stderr
    assert _unchanged(lab, "vm1") == before


def test_a_microvm_vm_is_refused_live_and_gets_the_nic_at_its_next_start(lab: Lab) -> None:  # noqa: F811
    _networks(lab)
    lab.ok("launch", "tiny", "vm2", "--vm", "--network", "a", "--wait", timeout=180)  # microvm by default
    lab.wait_address("vm2")
    before = _unchanged(lab, "vm2")
    refused = lab.virtkit("network", "attach", "b", "vm2")
    assert refused.returncode != 0, refused.stdout
    assert "microvm machine" in refused.stderr and "stop it first (virtkit stop vm2)" in refused.stderr
    assert _unchanged(lab, "vm2") == before

    lab.ok("stop", "vm2")
    nic = _attach(lab, "vm2")
    lab.ok("start", "vm2", "--wait", timeout=180)
    _wait_addresses(lab, "vm2", [lab.nic_ip("vm2"), nic["ip"]])
    assert _ping(lab, "vm2", GATEWAY_B)
    refused = lab.virtkit("network", "detach", "b", "vm2")
    assert refused.returncode != 0 and "stop it first" in refused.stderr
    assert [n["network"] for n in _nics(lab, "vm2")] == ["a", "b"]
