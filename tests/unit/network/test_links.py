"""links without touching the host: names, MACs and aliases checked, errno translated, the tun
ioctl numbers, the stable bridge MAC, and the parsing of netlink messages (a stand-in socket).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import platform
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtkit.errors import ConflictError, HostCapabilityError, NotFoundError, SpecError, ToolError
from virtkit.network import links, netlink


@pytest.mark.parametrize("name", ["eth0", "vk-default", "a", "a" * 15, "vkab12cd34n15", "br_0.100", "x@y"])
def test_good_names_pass(name: str) -> None:
    assert links.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 16,
        ".",
        "..",
        "a/b",
        "a:b",
        "a b",
        "a\tb",
        "a\nb",
        "a\0b",
        "é",
        "eth0\u00a0",
        None,
        3,
        b"eth0",
    ],
)
def test_bad_names_are_spec_errors_that_say_the_rules(name: Any) -> None:
    with pytest.raises(SpecError) as caught:
        links.check_name(name)
    assert "1 to 15" in caught.value.message and repr(name) in caught.value.message


@given(st.text(max_size=20))
def test_a_name_that_passes_fits_the_kernel(name: str) -> None:
    try:
        links.check_name(name)
    except SpecError:
        return
    raw = name.encode()
    assert 1 <= len(raw) < links.IFNAMSIZ and name not in (".", "..")
    assert not any(c in name for c in "/: \t\n\r\0") and name.isascii() and name.isprintable()


def test_the_name_check_names_what_was_checked() -> None:
    with pytest.raises(SpecError, match="bridge name"):
        links.check_name("a/b", "bridge name")


@pytest.mark.parametrize("mac", ["52:54:00:12:34:56", "FE:54:00:AB:CD:EF", "02:00:00:00:00:01"])
def test_unicast_macs_pass_lowercased(mac: str) -> None:
    assert netlink.check_mac(mac) == mac.lower()


BAD_MACS = ["", "52:54:00:12:34", "52-54-00-12-34-56", "525400123456", "01:00:5e:00:00:01"]
BAD_MACS += ["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "52:54:00:12:34:5g", " 52:54:00:12:34:56"]


@pytest.mark.parametrize("mac", BAD_MACS)
def test_bad_macs_are_refused(mac: str) -> None:
    with pytest.raises(SpecError, match="MAC"):
        netlink.check_mac(mac)


@pytest.mark.parametrize("text", ["", "a\0b", "x" * 256])
def test_bad_aliases_are_refused(text: str) -> None:
    with pytest.raises(SpecError, match="alias"):
        netlink.check_alias(text)


@pytest.mark.parametrize("value", [-1, 2**32 - 1, 2**32, True, "0", 1.0])
def test_bad_uids_are_refused(value: Any) -> None:
    with pytest.raises(SpecError, match="uid"):
        netlink.check_id(value, "tap owner uid")


@given(st.text(min_size=1, max_size=100))
def test_the_bridge_mac_is_stable_unicast_and_locally_administered(alias: str) -> None:
    mac = links._stable_mac(alias)
    assert netlink.check_mac(mac) == mac == links._stable_mac(alias)
    assert int(mac[:2], 16) & 0b11 == 0b10


def test_bridge_macs_differ_between_networks() -> None:
    assert links._stable_mac("virtkit:/r:network a") != links._stable_mac("virtkit:/r:network b")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="the generic ioctl encoding")
def test_tun_ioctl_numbers_are_the_kernels() -> None:
    assert (links._TUNSETIFF, links._TUNSETPERSIST, links._TUNSETOWNER, links._TUNSETGROUP) == (
        0x400454CA, 0x400454CB, 0x400454CC, 0x400454CE,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("code", "error", "words"),
    [
        (errno.EEXIST, ConflictError, "already exists"),
        (errno.ENODEV, NotFoundError, "no such interface"),
        (errno.EPERM, HostCapabilityError, "permission denied"),
        (errno.EACCES, HostCapabilityError, "permission denied"),
        (errno.EOPNOTSUPP, HostCapabilityError, "not supported"),
        (errno.EINVAL, ToolError, "Invalid argument"),
        (0, ToolError, "unknown error"),
    ],
)
def test_errno_is_translated_naming_what_was_done(code: int, error: type[Exception], words: str) -> None:
    translated = netlink.netlink_error(code, "create bridge vk-x")
    assert type(translated) is error
    assert "cannot create bridge vk-x" in str(translated) and words in str(translated)


def test_permission_errors_say_what_to_do() -> None:
    translated = netlink.netlink_error(errno.EPERM, "create tap vkt0")
    assert isinstance(translated, HostCapabilityError) and translated.hint and "root" in translated.hint


# --- requests checked before any netlink ------------------------------------------------------


@pytest.fixture
def no_netlink(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("netlink was reached")

    monkeypatch.setattr(netlink, "IPRoute", refuse)


@pytest.mark.usefixtures("no_netlink")
@pytest.mark.parametrize(
    "call",
    [
        lambda: links.ensure_bridge("vk-x", "10.0.0.1", alias="a"),
        lambda: links.ensure_bridge("vk-x", "10.0.0.255/24", alias="a"),
        lambda: links.ensure_bridge("vk-x", "10.0.0.1/24", alias="a", mtu=True),
        lambda: links.ensure_bridge("vk-x", "10.0.0.1/33", alias="a"),
        lambda: links.create_tap("vkt0", bridge="vk-x", owner=-1),
        lambda: links.create_tap("vkt0", bridge="vk-x", owner=0, group=2**40),
        lambda: links.create_tap("vkt0", bridge="vk-x", owner=0, mac="01:02:03:04:05:06"),
        lambda: links.create_veth("vkp0", bridge="vk-x", pid=0, inner="eth0", mac="52:54:00:00:00:01"),
        lambda: links.create_veth("vkp0", bridge="vk-x", pid=1, inner="eth0/1", mac="52:54:00:00:00:01"),
        lambda: links.create_veth(
            "vkp0", bridge="vk-x", pid=os.getpid(), inner="eth0", mac="52:54:00:00:00:01"
        ),
        lambda: links.set_master("vkp0", "a b"),
        lambda: links.create_ifb("vkifb", companion_of=".."),
    ],
)
def test_bad_requests_never_reach_netlink(call: Any) -> None:
    with pytest.raises(SpecError):
        call()


def test_a_missing_process_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="no process 4194305"):
        links._netns_of(4194305)  # above the kernel's pid_max limit: never a process


# --- parsing netlink messages -----------------------------------------------------------------


class Msg(dict[Any, Any]):
    """A netlink message as pyroute2 gives it: fields by key, attributes by name or path."""

    def __init__(self, fields: dict[str, Any], attrs: dict[Any, Any]) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self.attrs:
            return self.attrs[key]
        return super().get(key, default)


class FakeIPRoute:
    def __init__(self, routes: list[Msg], addrs: list[Msg], links_: list[Msg]) -> None:
        self.routes, self.addrs, self.links_ = routes, addrs, links_

    def route(self, command: str, **kwargs: Any) -> Iterator[Msg]:
        assert command == "dump"
        return iter(self.routes)

    def addr(self, command: str, **kwargs: Any) -> Iterator[Msg]:
        assert command == "dump"
        return iter(self.addrs)

    def link(self, command: str, **kwargs: Any) -> Iterator[Msg]:
        assert command == "dump"
        return iter(self.links_)

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _route(dst: str | None, dst_len: int, table: int = 254, type_: int = 1) -> Msg:
    return Msg({"dst_len": dst_len, "table": table if table < 256 else 252, "type": type_},
               {"dst": dst, "table": table})  # fmt: skip


def test_networks_in_use_are_routes_and_addresses_without_the_kernels_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = [
        _route(None, 0),  # default
        _route("10.20.30.0", 24),
        _route("192.168.77.0", 24, table=1000),  # a table past 255
        _route("10.66.0.0", 16, type_=6),  # blackhole: in use all the same
        _route("10.20.30.1", 32, table=255, type_=2),  # local
        _route("10.20.30.255", 32, table=255, type_=3),  # broadcast
        _route("224.0.0.0", 4, type_=5),  # multicast
        _route("10.20.30.0", 24, table=100),  # a duplicate
    ]
    addrs = [
        Msg({"index": 1, "prefixlen": 8}, {"address": "127.0.0.1"}),
        Msg({"index": 2, "prefixlen": 30}, {"address": "172.31.4.5"}),
    ]
    monkeypatch.setattr(netlink, "IPRoute", lambda: FakeIPRoute(routes, addrs, []))
    assert links.addresses_in_use() == [
        ipaddress.IPv4Network(n)
        for n in ("10.20.30.0/24", "10.66.0.0/16", "127.0.0.0/8", "172.31.4.4/30", "192.168.77.0/24")
    ]


def test_links_are_read_from_their_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    msgs = [
        Msg({"index": 2, "flags": 0x1003}, {"ifname": "vk-a", ("linkinfo", "kind"): "bridge",
            "ifalias": "virtkit:x", "mtu": 1400, "stats64": {"rx_bytes": 5, "tx_bytes": 6, "multicast": 1}}),
        Msg({"index": 3, "flags": 0x1002}, {"ifname": "vkp0", "master": 2, "mtu": 1400,
            "stats64": {"rx_bytes": 7, "tx_bytes": 8, "rx_packets": 1, "tx_packets": 2}}),
        Msg({"index": 4, "flags": 0}, {"ifname": "vkp1", "master": 9}),
    ]  # fmt: skip
    nl = netlink.Netlink(FakeIPRoute([], [], msgs))
    bridge, port, other = nl.links()
    assert (bridge.name, bridge.kind, bridge.alias, bridge.up, bridge.mtu) == (
        "vk-a",
        "bridge",
        "virtkit:x",
        True,
        1400,
    )
    assert (port.master, port.up, port.kind, port.alias) == (2, False, None, None)
    assert port.stats == {"rx_bytes": 7, "tx_bytes": 8, "rx_packets": 1, "tx_packets": 2}
    assert other.stats == {} and other.mtu == 0


def test_companions_are_marked_by_their_alias() -> None:
    assert links.companion_alias("vkp0") == "virtkit:companion vkp0"


def test_a_companion_is_named_after_its_interface() -> None:
    name = links.companion_name("vkp0")
    assert name.startswith("vkifb") and len(name) == 15 and name == links.companion_name("vkp0")
    assert name != links.companion_name("vkp1")
    assert len(links.companion_name("x" * 15)) == 15
    with pytest.raises(SpecError):
        links.companion_name("a b")
