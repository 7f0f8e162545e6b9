"""The address plan: subnets refused with reasons, chosen free, IPs and MACs handed out."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtkit.errors import ConflictError, SpecError
from virtkit.network import addressing as a

N = ipaddress.IPv4Network


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.0.0.0", "CIDR"),
        ("10.0.0.5/24", "host bits"),
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("10.0.0.0/8", "/16 to /29"),
        ("10.0.0.0/30", "/16 to /29"),
        ("8.8.8.0/24", "private"),
        ("fd00::/64", "fd00::/64"),
        ("10.0.0.0/24\n", "CIDR"),
        ("", "CIDR"),
        ("10.0.0.0/24; drop", "10.0.0.0/24; drop"),
        ("999.0.0.0/24", "999"),
    ],
)
def test_bad_subnets_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(SpecError) as caught:
        a.parse_subnet(text)
    assert why in caught.value.message + (caught.value.hint or "")


def test_a_subnet_with_host_bits_suggests_the_network() -> None:
    with pytest.raises(SpecError) as caught:
        a.parse_subnet("10.1.2.3/24")
    assert caught.value.hint == "did you mean 10.1.2.0/24?"


def test_overlaps_with_the_host_and_other_networks_are_conflicts() -> None:
    subnet = a.parse_subnet("10.20.30.0/24")
    with pytest.raises(ConflictError, match="network 'web'"):
        a.check_free(subnet, [], {"web": "10.20.0.0/16"})
    with pytest.raises(ConflictError, match="this host already routes"):
        a.check_free(subnet, [N("10.20.30.128/25")], {})
    a.check_free(subnet, [N("10.20.31.0/24"), N("0.0.0.0/0")], {"db": "10.20.29.0/24"})


def test_the_chosen_subnet_avoids_everything_in_use() -> None:
    assert a.choose_subnet([], {}) == N("10.161.0.0/24")
    host = [N("10.161.0.0/23"), N("10.161.2.7/32")]
    assert a.choose_subnet(host, {"web": "10.161.3.0/24"}) == N("10.161.4.0/24")
    with pytest.raises(ConflictError, match="no free"):
        a.choose_subnet([N("10.0.0.0/8")], {})


def test_ips_skip_the_gateway_and_taken_ones() -> None:
    subnet = N("10.9.8.0/29")
    assert a.allocate_ip(subnet, set()) == "10.9.8.2"
    assert a.allocate_ip(subnet, {"10.9.8.2", "10.9.8.3"}) == "10.9.8.4"
    assert a.allocate_ip(subnet, set(), "10.9.8.6") == "10.9.8.6"
    for wanted, error in [("10.9.8.1", SpecError), ("10.9.8.7", SpecError), ("10.9.8.0", SpecError),
                          ("10.9.9.2", SpecError), ("nonsense", SpecError),
                          ("10.9.8.2", ConflictError)]:  # fmt: skip
        with pytest.raises(error):
            a.allocate_ip(subnet, {"10.9.8.2"}, wanted)
    with pytest.raises(ConflictError, match="no address"):
        a.allocate_ip(subnet, {f"10.9.8.{i}" for i in range(2, 7)})


def test_network_names_must_fit_a_bridge_name() -> None:
    assert a.bridge_of("default") == "vk-default"
    assert len(a.bridge_of("x" * 12)) == 15
    with pytest.raises(SpecError, match="15 characters"):
        a.network_name("x" * 13)
    for bad in ("", "Web", "a b", "a/b", "-a", "a" * 64, "\u00e9t\u00e9"):
        with pytest.raises(SpecError):
            a.network_name(bad)


def test_macs() -> None:
    assert a.parse_mac("52-54-00-AB-cd-01") == "52:54:00:ab:cd:01"
    for bad in ("01:00:5e:00:00:01", "00:00:00:00:00:00", "52:54:00:ab:cd", "52:54:00:ab:cd:0g", "",
                "52:54:00:ab:cd:01\n-x"):  # fmt: skip
        with pytest.raises(SpecError):
            a.parse_mac(bad)
    used = {a.random_mac() for _ in range(50)}
    assert all(mac.startswith("52:54:00:") and a.parse_mac(mac) == mac for mac in used)


@given(st.uuids(), st.integers(0, a.MAX_NICS - 1))
def test_port_devices_are_valid_interface_names(uuid: object, index: int) -> None:
    name = a.port_device(str(uuid), index)
    assert len(name) <= 15 and name.startswith("vk") and "-" not in name
