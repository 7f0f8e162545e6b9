"""Networks as objects, as a user types them: create, list, show, delete, reconcile — and bad input
refused with clear errors, the host's networking untouched (links, addresses, routes, ruleset)."""

from __future__ import annotations

import json

from tests.e2e.netlab import Lab, lab  # noqa: F401  (the fixture)


def test_create_list_show_delete(lab: Lab) -> None:  # noqa: F811
    before = lab.snapshot()
    made = lab.ok("network", "create", "web", "--subnet", "10.20.30.0/24", "--dns-domain", "lab.internal")
    assert "10.20.30.0/24 on vk-web, gateway 10.20.30.1" in made.stdout
    iso = lab.ok("network", "create", "backend", "--type", "isolated")
    assert "isolated, 10.161.0.0/24 on vk-backend" in iso.stdout  # the first free subnet

    listed = json.loads(lab.ok("network", "list", "--json").stdout)
    assert [(n["name"], n["type"], n["state"]) for n in listed] == [("backend", "isolated", "up"),
                                                                   ("web", "nat", "up")]  # fmt: skip
    table = lab.ok("network", "list").stdout
    assert "vk-web" in table and "10.161.0.1" in table

    shown = lab.ok("network", "show", "web").stdout
    assert (
        "Bridge:" in shown and "vk-web (up)" in shown and "dnsmasq pid" in shown and "lab.internal" in shown
    )
    addr = lab.host.run(["ip", "-j", "addr", "show", "dev", "vk-web"], check=True).stdout
    assert '"local":"10.20.30.1","prefixlen":24' in addr.replace(" ", "")
    ruleset = lab.host.run(["nft", "list", "table", "inet", "virtkit"], check=True).stdout
    assert "vk-web" in ruleset and "vk-backend" in ruleset

    for name in ("web", "backend"):
        assert lab.ok("network", "delete", name).stdout == f"Network {name} deleted.\n"
    after = lab.snapshot()
    assert after == before  # no bridge, no address, no route, no rule left
    assert not list(lab.root.glob("networks/*"))
    assert not _our_dnsmasq(lab)


def _our_dnsmasq(lab: Lab) -> list[str]:  # noqa: F811
    ps = lab.host.run(["ps", "-eo", "args"], check=True).stdout.splitlines()
    return [line for line in ps if "dnsmasq" in line and str(lab.root) in line]


def assert_refused(lab: Lab, args: list[str], code: int, *words: str) -> None:  # noqa: F811
    before = lab.snapshot()
    done = lab.virtkit(*args)
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stderr.startswith("Error: "), done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)
    assert lab.snapshot() == before, f"virtkit {' '.join(args)} changed the host's networking"


def test_bad_input_is_refused_and_changes_nothing(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "web", "--subnet", "10.20.30.0/24")
    lab.host.run(["ip", "addr", "add", "192.168.77.1/24", "dev", "lo"], check=True)  # the host's own route
    assert_refused(
        lab, ["network", "create", "web2", "--subnet", "10.20.0.0/16"], 1, "overlaps 10.20.30.0/24"
    )
    assert_refused(lab, ["network", "create", "web3", "--subnet", "192.168.77.0/24"], 1, "already routes")
    assert_refused(lab, ["network", "create", "web4", "--subnet", "172.31.250.0/25"], 1, "already routes")
    assert_refused(lab, ["network", "create", "bad", "--subnet", "10.1.2.300/24"], 2, "invalid subnet")
    assert_refused(lab, ["network", "create", "bad", "--subnet", "10.1.2.3/24"], 2, "host bits")
    assert_refused(lab, ["network", "create", "bad", "--subnet", "8.8.8.0/24"], 2, "private")
    assert_refused(lab, ["network", "create", "abcdefghijklm"], 2, "15 characters")
    assert_refused(lab, ["network", "create", "Bad_Name"], 2, "invalid network name")
    assert_refused(lab, ["network", "create", "web"], 1, "already exists")
    assert_refused(lab, ["network", "create", "ok", "--dns-domain", "a..b"], 2, "DNS domain")
    assert_refused(lab, ["network", "show", "nope"], 1, "not found")
    assert_refused(lab, ["network", "delete", "nope"], 1, "not found")
    # an interface of that name made by someone else: never taken over
    lab.host.run(
        ["ip", "link", "add", "vk-theirs", "type", "veth", "peer", "name", "theirs-peer"], check=True
    )
    assert_refused(lab, ["network", "create", "theirs"], 1, "vk-theirs already exists")

    lab.ok("create", "tiny", "c1", "--container", "--network", "web")
    assert_refused(lab, ["network", "delete", "web"], 1, "in use by c1")
    for args, code, word in [
        (["launch", "tiny", "c2", "--network", "web,ip=10.20.30.1"], 2, "gateway"),
        (["launch", "tiny", "c2", "--network", "web,ip=10.99.0.5"], 2, "not an instance address"),
        (["launch", "tiny", "c2", "--network", "web", "--ip", lab.nic_ip("c1")], 1, "already given"),
        (["launch", "tiny", "c2", "--network", "web", "--mac", "01:00:5e:00:00:01"], 2, "multicast"),
        (["launch", "tiny", "c2", "--network", "web,speed=1"], 2, "is not one of"),
        (["launch", "tiny", "c2", "--network", "web", "--network-limit", "fast"], 2, "rate"),
        (["launch", "tiny", "c2", "--network", "nope"], 1, "network 'nope' not found"),
        (["launch", "tiny", "c2", "--network", "web", "--network", "web"], 2, "one per network"),
        (["launch", "tiny", "c2", "--publish", "80"], 2, "needs a NIC"),
        (["launch", "tiny", "c2", "--network", "web", "--publish", "99999:80"], 2, "invalid port forward"),
        (["launch", "tiny", "c2", "--network", "web", "--publish", "80:80/sctp"], 2, "invalid port forward"),
    ]:
        assert_refused(lab, args, code, word)
        assert lab.virtkit("show", "c2").returncode != 0  # nothing half-made
    lab.ok("delete", "c1")
    lab.ok("network", "delete", "web")


def test_reconcile_after_a_reboot(lab: Lab) -> None:  # noqa: F811
    lab.ok("network", "create", "web", "--subnet", "10.20.30.0/24")
    nothing = lab.ok("network", "reconcile")
    assert "nothing to repair" in nothing.stdout
    before = lab.snapshot()
    # a reboot: bridges, rules and dnsmasq gone
    lab.host.run(["ip", "link", "delete", "vk-web"], check=True)
    lab.host.run(["nft", "delete", "table", "inet", "virtkit"], check=True)
    for pidfile in lab.root.glob("networks/*/*.pid"):
        lab.host.run(["kill", pidfile.read_text().strip()])
    lab.host.run(["sleep", "0.3"])
    repaired = lab.ok("network", "reconcile")
    assert "web: bridge and dnsmasq restored" in repaired.stdout, repaired.stdout
    assert "firewall" in repaired.stdout
    assert lab.snapshot().keys() == before.keys()
    again = lab.ok("network", "reconcile")
    assert "nothing to repair" in again.stdout, again.stdout
    shown = json.loads(lab.ok("network", "show", "web", "--json").stdout)
    assert shown["state"] == "up"


def test_a_dry_run_shows_the_nics_and_makes_nothing(lab: Lab) -> None:  # noqa: F811
    before = lab.snapshot()
    dry = lab.ok("launch", "tiny", "d1", "--vm", "--network", "default", "--dry-run").stdout
    assert "-netdev" in dry and "tap" in dry and "virtio-net" in dry, dry  # the NIC it would have
    assert lab.snapshot() == before  # `default` is not made by a dry run
    assert json.loads(lab.ok("network", "list", "--json").stdout) == []
    assert_refused(lab, ["launch", "tiny", "d1", "--network", "nope", "--dry-run"], 1, "'nope' not found")
    assert_refused(lab, ["launch", "tiny", "d1", "--publish", "80", "--dry-run"], 2, "needs a NIC")
    assert lab.virtkit("show", "d1").returncode != 0
