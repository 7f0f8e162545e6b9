"""The nftables renderer: golden scripts, input validation, and foreign-firewall parsing.

After an intended change to nft.py, regenerate the golden files with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/network/test_nft.py`` and review the diff.
The golden scripts are also checked against the running kernel with ``nft -c`` (root, in a
network namespace of their own); the traffic they let through is proven in
tests/integration/network/test_nft.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.netns import own_netns
from virtkit.errors import SpecError, ToolError
from virtkit.network import nft, nftforeign
from virtkit.network.nft import ForwardRules, NetRules, PortRules

GOLDEN = Path(__file__).parent / "golden"

WEB = NetRules("web", "vk-web", "10.20.30.0/24", "10.20.30.1", True)
DB = NetRules("db", "vk-db", "10.20.31.0/24", "10.20.31.1", True)
LAB = NetRules("lab", "vk-lab", "10.20.40.0/22", "10.20.40.1", False)
WEB1 = PortRules("vkt1a2b3c4d", "vk-web", "52:54:00:12:34:01", "10.20.30.11", False)
WEB2 = PortRules("vkv5e6f7a8b", "vk-web", "52:54:00:12:34:02", "10.20.30.12", True)
DB1 = PortRules("vkv0011aabb", "vk-db", "52:54:00:12:34:03", "10.20.31.11", False)
LAB1 = PortRules("vkt99887766", "vk-lab", "52:54:00:12:34:04", "10.20.41.200", True)
HTTP = ForwardRules("tcp", 8080, "10.20.30.11", 80, "vk-web")
DNS = ForwardRules("udp", 5353, "10.20.30.12", 53, "vk-web")
PG = ForwardRules("tcp", 5432, "10.20.31.11", 5432, "vk-db")
LAN = NetRules("lan", "vk-lan", "", "", False, True, "eth1")
LAN1 = PortRules("vkv1234abcd", "vk-lan", "52:54:00:12:34:05", "", False)

CASES: dict[str, tuple[list[NetRules], list[PortRules], list[ForwardRules]]] = {
    "empty": ([], [], []),
    "isolated": ([LAB], [LAB1], []),
    "three_networks": ([WEB, DB, LAB], [WEB1, WEB2, DB1, LAB1], [HTTP, DNS, PG]),
    "bridged": ([WEB, LAN], [WEB1, LAN1], [HTTP]),
}


def _golden(case: str) -> Path:
    return GOLDEN / f"nft_{case}.nft"


@pytest.mark.parametrize("case", sorted(CASES))
def test_script_matches_golden(case: str) -> None:
    text = nft.render(*CASES[case])
    golden = _golden(case)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden.name}: run with UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"script changed for {case}; if intended, regenerate with UPDATE_GOLDEN=1"
    )


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.name for p in GOLDEN.glob("nft_*.nft")) == sorted(_golden(c).name for c in CASES)


def test_order_of_the_description_does_not_matter() -> None:
    nets, ports, forwards = CASES["three_networks"]
    rng = random.Random(6)
    for _ in range(5):
        shuffled = [rng.sample(x, len(x)) for x in (nets, ports, forwards)]
        assert nft.render(*shuffled) == nft.render(nets, ports, forwards)  # type: ignore[arg-type]


def test_script_replaces_our_two_tables_and_touches_nothing_else() -> None:
    text = nft.render(*CASES["three_networks"])
    commands = [line for line in text.splitlines() if line and not line.startswith((" ", "#", "}"))]
    assert commands == [
        "table inet virtkit {}",
        "delete table inet virtkit",
        "table inet virtkit {",
        "table bridge virtkit {}",
        "delete table bridge virtkit",
        "table bridge virtkit {",
    ]
    assert "flush" not in text


def _bridge_table(text: str) -> str:
    return text[text.index("table bridge virtkit {\n") :]


def test_every_port_is_judged_in_the_bridge_table_and_none_in_the_inet_table() -> None:
    text = nft.render(*CASES["three_networks"])
    bridge = _bridge_table(text)
    ports = sorted(p.device for p in CASES["three_networks"][1])
    jumps = "".join(f'            "{d}" : jump port_{d},\n' for d in ports)
    assert f"        iifname vmap {{\n{jumps}        }}\n" in bridge
    assert [line.split()[1] for line in bridge.splitlines() if line.startswith("    chain ")] == [
        "prerouting",
        *(f"port_{d}" for d in ports),
    ]
    assert "ingress" not in text and "port_" not in text[: text.index("table bridge")]


def test_the_bridge_table_has_no_dispatch_without_ports() -> None:
    bridge = _bridge_table(nft.render([WEB], [], []))
    assert "vmap" not in bridge and "port_" not in bridge
    assert "type filter hook prerouting priority -300; policy accept;" in bridge


def test_a_port_accepts_only_its_own_ether_ip_and_arp_sender() -> None:
    rules = _bridge_table(nft.render([WEB], [WEB1], [])).split("chain port_vkt1a2b3c4d {")[1]
    mac, ip = WEB1.mac, WEB1.ip
    assert [line.strip() for line in rules.splitlines()[2:6]] == [
        f"ether saddr {mac} ether type ip ip saddr {ip} accept",
        f"ether saddr {mac} ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",
        f"ether saddr {mac} ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4"
        f" arp saddr ether {mac} arp saddr ip {{ {ip}, 0.0.0.0 }} accept",
        "counter drop",
    ]


def test_values_are_normalized() -> None:
    net = NetRules("web", "vk-web", "10.20.30.0/24", "10.20.30.1", True)
    port = PortRules("tap0", "vk-web", "52:54:00:AB:CD:EF", "10.20.30.11", False)
    assert "ether saddr 52:54:00:ab:cd:ef ether type ip ip saddr 10.20.30.11 accept" in nft.render(
        [net], [port], []
    )


@pytest.mark.root
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_script_is_accepted_by_the_kernel(case: str) -> None:
    with own_netns():
        nft.check(_golden(case).read_text())
        assert not nft.present()  # a check applies nothing


@pytest.mark.root
def test_check_reports_a_bad_script_as_a_tool_error() -> None:
    with own_netns(), pytest.raises(ToolError) as caught:
        nft.check("table inet virtkit { chain c { bogus } }\n")
    assert caught.value.argv == ["nft", "-c", "-f", "-"]
    assert caught.value.returncode == 1
    assert "syntax error" in caught.value.message
    assert "bogus" in caught.value.stderr


# ---------------------------------------------------------------- validation: nothing unsafe gets in

INJECTIONS = [
    "",
    'vk-a" accept',
    "vk-a; flush ruleset",
    "vk a",
    "vk\na",
    "vk-a*",
    "-vk",
    ".vk",
    "a" * 16,
    "vk/a",
    "vk{a}",
    "vké",
]


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize("where", ["bridge", "device", "forward-bridge"])
def test_interface_names_must_be_plain(where: str, bad: str) -> None:
    net, port, forward = WEB, WEB1, HTTP
    if where == "bridge":
        net = dataclasses.replace(WEB, bridge=bad)
    elif where == "device":
        port = dataclasses.replace(WEB1, device=bad)
    else:
        forward = dataclasses.replace(HTTP, bridge=bad)
    with pytest.raises(SpecError):
        nft.render([net], [port], [forward])


@pytest.mark.parametrize(
    "field,bad",
    [
        ("name", ""),
        ("name", 'web" ; flush ruleset ; "'),
        ("name", "a" * 64),
        ("subnet", "10.20.30.1/24"),  # host bits set
        ("subnet", "10.20.30.0/31"),
        ("subnet", "10.20.30.0"),
        ("subnet", "10.20.30.0/24 accept"),
        ("subnet", "fd00::/64"),
        ("gateway", "10.20.31.1"),  # outside the subnet
        ("gateway", "10.20.30.0"),
        ("gateway", "10.20.30.255"),
        ("gateway", "10.20.30.01"),
        ("gateway", "10.20.30.1 "),
        ("nat", 1),
        ("nat", "yes"),
    ],
)
def test_network_values_are_checked(field: str, bad: Any) -> None:
    with pytest.raises(SpecError):
        nft.render([dataclasses.replace(WEB, **{field: bad})], [], [])


@pytest.mark.parametrize(
    "field,bad",
    [
        ("mac", "52:54:00:12:34"),
        ("mac", "52:54:00:12:34:0g"),
        ("mac", "52-54-00-12-34-01"),
        ("mac", "52:54:00:12:34:01 accept"),
        ("mac", "01:00:5e:00:00:01"),  # multicast
        ("mac", "ff:ff:ff:ff:ff:ff"),
        ("ip", "0.0.0.0"),
        ("ip", "10.20.30.1"),  # the gateway
        ("ip", "10.20.31.11"),  # another network's
        ("ip", "10.20.30.255"),
        ("ip", "10.20.30.11/32"),
        ("ip", "10.20.30.11, 10.20.31.0/24"),
        ("bridge", "vk-nowhere"),
        ("allow_host", None),
    ],
)
def test_port_values_are_checked(field: str, bad: Any) -> None:
    with pytest.raises(SpecError):
        nft.render([WEB], [dataclasses.replace(WEB1, **{field: bad})], [])


@pytest.mark.parametrize(
    "field,bad",
    [
        ("proto", "icmp"),
        ("proto", "TCP"),
        ("proto", "tcp "),
        ("host_port", 0),
        ("host_port", 65536),
        ("host_port", "8080"),
        ("host_port", True),
        ("port", -1),
        ("port", 80.0),
        ("ip", "10.20.31.11"),  # not on the forward's network
        ("ip", "10.20.30.11:80"),
        ("bridge", "vk-lab"),  # an isolated network
        ("bridge", "vk-nowhere"),
    ],
)
def test_forward_values_are_checked(field: str, bad: Any) -> None:
    with pytest.raises(SpecError):
        nft.render([WEB, LAB], [], [dataclasses.replace(HTTP, **{field: bad})])


@pytest.mark.parametrize(
    "nets,ports,forwards",
    [
        ([WEB, dataclasses.replace(DB, bridge="vk-web")], [], []),
        ([WEB, dataclasses.replace(DB, subnet="10.20.30.128/25", gateway="10.20.30.129")], [], []),
        ([WEB, dataclasses.replace(DB, subnet="10.20.0.0/16", gateway="10.20.0.1")], [], []),
        ([WEB], [WEB1, dataclasses.replace(WEB2, device=WEB1.device)], []),
        ([WEB], [WEB1, dataclasses.replace(WEB2, ip=WEB1.ip)], []),
        ([WEB], [WEB1, dataclasses.replace(WEB2, mac=WEB1.mac)], []),
        ([WEB], [dataclasses.replace(WEB1, device="vk-web")], []),
        ([WEB], [], [HTTP, dataclasses.replace(HTTP, ip="10.20.30.12")]),
    ],
    ids=[
        "bridge-twice",
        "subnets-overlap",
        "subnet-contains-another",
        "device-twice",
        "ip-twice",
        "mac-twice",
        "device-is-a-bridge",
        "host-port-twice",
    ],
)
def test_inconsistent_descriptions_are_refused(
    nets: list[NetRules], ports: list[PortRules], forwards: list[ForwardRules]
) -> None:
    with pytest.raises(SpecError):
        nft.render(nets, ports, forwards)


class Sly(str):
    """A string that looks plain to checks but formats (and prints) as nft syntax."""

    def __format__(self, spec: str) -> str:
        return 'x" accept; flush ruleset; "'

    __str__ = __format__  # type: ignore[assignment]

    def lower(self) -> str:
        return "52:54:00:12:34:56"


def test_string_subclasses_cannot_smuggle_syntax_past_the_checks() -> None:
    net = NetRules(Sly("web"), Sly("vk-web"), "10.20.30.0/24", "10.20.30.1", True)
    port = PortRules(Sly("tap0"), Sly("vk-web"), Sly("52:54:00:12:34:01"), "10.20.30.11", False)
    forward = ForwardRules(Sly("tcp"), 8080, "10.20.30.11", 80, Sly("vk-web"))
    text = nft.render([net], [port], [forward])
    assert "flush" not in text
    assert text == nft.render([WEB], [dataclasses.replace(WEB1, device="tap0")], [HTTP])


def test_same_port_number_for_tcp_and_udp_is_fine() -> None:
    udp = dataclasses.replace(HTTP, proto="udp")
    text = nft.render([WEB], [], [HTTP, udp])
    assert "tcp dport 8080" in text and "udp dport 8080" in text


def test_open_foreign_refuses_unsafe_bridge_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nftforeign, "_ruleset", lambda: pytest.fail("read the ruleset before validating"))
    with pytest.raises(SpecError):
        nftforeign.open_foreign(['vk-a" accept'])


# ---------------------------------------------------------------- foreign firewalls, from canned JSON


def _chain(family: str, table: str, name: str, **base: Any) -> dict[str, Any]:
    return {"chain": {"family": family, "table": table, "name": name, "handle": 1, **base}}


def _rule(family: str, table: str, chain: str, handle: int, comment: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"family": family, "table": table, "chain": chain, "handle": handle, "expr": []}
    if comment is not None:
        rule["comment"] = comment
    return {"rule": rule}


FORWARD_DROP = {"type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}
RULESET: list[dict[str, Any]] = [
    {"metainfo": {"version": "1.0.6"}},
    _chain("ip", "filter", "FORWARD", **FORWARD_DROP),
    _chain("ip", "filter", "DOCKER-USER"),
    _chain("inet", "admin", "fwd", **FORWARD_DROP),
    _chain("inet", "virtkit", "forward", **FORWARD_DROP),  # ours: never reported
    _chain("ip6", "filter", "FORWARD", **FORWARD_DROP),  # IPv6 only: does not see our traffic
    _chain("inet", "accepting", "fwd", **{**FORWARD_DROP, "policy": "accept"}),
    _chain("inet", "admin", "in", **{**FORWARD_DROP, "hook": "input"}),
    _rule("ip", "filter", "DOCKER-USER", 7, "virtkit"),
    _rule("ip", "filter", "DOCKER-USER", 8, "someone else"),
    _rule("inet", "admin", "fwd", 9, "virtkit"),
    _rule("inet", "virtkit", "forward", 10, "virtkit"),
    _rule("bridge", "virtkit", "prerouting", 12, "virtkit"),
    _rule("ip", "filter", "FORWARD", 11),
]


@pytest.fixture
def fake_nft(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], str]]:
    calls: list[tuple[list[str], str]] = []

    def run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        calls.append((list(args), stdin))
        out = json.dumps({"nftables": RULESET}) if args[:3] == ["-j", "list", "ruleset"] else ""
        return subprocess.CompletedProcess(["nft", *args], 0, out, "")

    monkeypatch.setattr(nft, "_run", run)
    return calls


def test_foreign_forward_drops_lists_only_other_ipv4_dropping_forward_chains(fake_nft: Any) -> None:
    assert nftforeign.foreign_forward_drops() == ["ip filter FORWARD", "inet admin fwd"]


def _commands(stdin: str) -> list[dict[str, Any]]:
    return json.loads(stdin)["nftables"]  # type: ignore[no-any-return]


def test_open_foreign_replaces_old_rules_and_prefers_docker_user(
    fake_nft: list[tuple[list[str], str]],
) -> None:
    nftforeign.open_foreign(["vk-b", "vk-a", "vk-a"])
    args, stdin = fake_nft[-1]
    assert args == ["-j", "-f", "-"]
    commands = _commands(stdin)
    deletes = [c["delete"]["rule"] for c in commands if "delete" in c]
    assert [(d["table"], d["chain"], d["handle"]) for d in deletes] == [
        ("filter", "DOCKER-USER", 7),
        ("admin", "fwd", 9),
    ]
    inserts = [c["insert"]["rule"] for c in commands if "insert" in c]
    assert {(r["family"], r["table"], r["chain"]) for r in inserts} == {
        ("ip", "filter", "DOCKER-USER"),
        ("inet", "admin", "fwd"),
    }
    assert all(r["comment"] == "virtkit" and r["expr"][-1] == {"accept": None} for r in inserts)
    docker = [r["expr"][0]["match"] for r in inserts if r["chain"] == "DOCKER-USER"]
    # Each insert goes to the top, so the last inserted is listed first: vk-a iif, vk-a oif, vk-b ...
    listed = [(m["left"]["meta"]["key"], m["right"]) for m in reversed(docker)]
    assert listed == [("iifname", "vk-a"), ("oifname", "vk-a"), ("iifname", "vk-b"), ("oifname", "vk-b")]


def test_close_foreign_deletes_only_rules_with_our_comment_outside_our_table(
    fake_nft: list[tuple[list[str], str]],
) -> None:
    nftforeign.close_foreign()
    commands = _commands(fake_nft[-1][1])
    assert [c["delete"]["rule"]["handle"] for c in commands] == [7, 9]


def test_open_foreign_with_no_bridge_deletes_what_close_foreign_deletes(
    fake_nft: list[tuple[list[str], str]],
) -> None:
    nftforeign.open_foreign([])
    opened = _commands(fake_nft[-1][1])
    nftforeign.close_foreign()
    assert opened == _commands(fake_nft[-1][1])


def _fake_tables(monkeypatch: pytest.MonkeyPatch, listing: str) -> list[tuple[list[str], str]]:
    calls: list[tuple[list[str], str]] = []

    def run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        calls.append((list(args), stdin))
        return subprocess.CompletedProcess(["nft", *args], 0, listing, "")

    monkeypatch.setattr(nft, "_run", run)
    return calls


@pytest.mark.parametrize(
    "listing,present",
    [
        ("table inet virtkit\ntable bridge virtkit\n", True),
        ("table ip filter\ntable bridge virtkit\ntable inet virtkit\n", True),
        ("table inet virtkit\n", False),
        ("table bridge virtkit\n", False),
        ("table inet virtkit2\ntable bridge virtkit\n", False),
        ("", False),
    ],
)
def test_present_means_both_tables(monkeypatch: pytest.MonkeyPatch, listing: str, present: bool) -> None:
    _fake_tables(monkeypatch, listing)
    assert nft.present() is present


def test_remove_deletes_both_tables_in_one_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_tables(monkeypatch, "")
    nft.remove()
    assert calls == [
        (
            ["-f", "-"],
            "table inet virtkit {}\ndelete table inet virtkit\n"
            "table bridge virtkit {}\ndelete table bridge virtkit\n",
        )
    ]


def test_unreadable_ruleset_is_a_tool_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        nft, "_run", lambda args, stdin="": subprocess.CompletedProcess(["nft", *args], 0, "not json", "")
    )
    with pytest.raises(ToolError):
        nftforeign.foreign_forward_drops()


def test_missing_nft_is_a_host_capability_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from virtkit.errors import HostCapabilityError

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(HostCapabilityError):
        nft.present()


def test_a_bridged_network_is_not_the_hosts_and_its_ports_are_judged_by_mac_only() -> None:
    script = nft.render([WEB, LAN], [WEB1, LAN1], [])
    assert 'chain input_vk-lan {\n' in script and 'iifname "vk-lan" jump input_vk-lan' in script
    lan_input = script.split("chain input_vk-lan {")[1].split("}")[0]
    assert "counter drop" in lan_input and "accept" not in lan_input  # the host has no address there
    assert 'iifname { "eth1", "vkv1234abcd" } drop' in script  # bridge input: nothing for the host
    assert 'oifname { "eth1", "vkv1234abcd" } drop' in script  # bridge output: nothing from it
    port = script.split("chain port_vkv1234abcd {")[1].split("}")[0]
    assert "ether saddr 52:54:00:12:34:05 ether type ip accept" in port and "ip saddr" not in port
    assert "masquerade" not in script.split('oifname != "vk-web" masquerade')[1]  # no NAT for the LAN
    assert "vkt1a2b3c4d" not in script.split("chain input {", 2)[2]  # a nat port is not a LAN port


@pytest.mark.parametrize(
    ("nets", "ports"),
    [
        ([dataclasses.replace(LAN, subnet="10.9.0.0/24")], []),
        ([dataclasses.replace(LAN, gateway="10.9.0.1")], []),
        ([dataclasses.replace(LAN, nat=True)], []),
        ([dataclasses.replace(LAN, uplink="bad name")], []),
        ([dataclasses.replace(LAN, uplink="")], []),
        ([LAN], [dataclasses.replace(LAN1, ip="10.9.0.5")]),
        ([LAN], [dataclasses.replace(LAN1, mac="01:00:5e:00:00:01")]),
    ],
    ids=["subnet", "gateway", "nat", "bad-uplink", "no-uplink", "port-address", "multicast-mac"],
)
def test_bridged_descriptions_are_checked(nets: list[NetRules], ports: list[PortRules]) -> None:
    with pytest.raises(SpecError):
        nft.render(nets, ports, [])
