"""The uplink of a bridged network: a host interface (a spare NIC, a VLAN interface, one end of a
veth whose other end is in a bridge of the administrator's) enslaved to the network's bridge. It
puts the network's instances on that interface's LAN: they take their addresses from the LAN's
DHCP server (or their own configuration), and a VM moved live to another host on the same LAN
keeps its address and its connections.

An uplink must be an interface of this host that nothing else uses: not a bridge, not a port of
another bridge, without IPv4 addresses (enslaving it would take them off the host: put the host's
address on a bridge of your own and give virtkit a veth into it, or use a spare NIC), not loopback
and not one of virtkit's own devices.
"""

from __future__ import annotations

import logging

from virtkit.errors import ConflictError, NotFoundError, StateError
from virtkit.network.netlink import check_name, require_bridge, session

log = logging.getLogger(__name__)

REFUSED_KINDS = {"bridge", "tun", "ifb", "ipip", "gre", "sit", "wireguard", "vti"}
OWN_PREFIX = "vk"  # virtkit's bridges (vk-NAME) and instance devices (vkXXXXXXXXnN)


def is_up(name: str) -> bool:
    """Whether interface `name` is up (administratively) now."""
    with session(f"look up interface {name}") as nl:
        link = nl.link(name)
        return link is not None and link.up


def check(name: str, bridge: str) -> None:
    """Refuse `name` as the uplink of our bridge `bridge` (which need not exist yet), saying what
    is wrong and what to do; its being `bridge`'s port already is fine."""
    check_name(name, "uplink interface name")
    if name.startswith(OWN_PREFIX):
        raise ConflictError(f"interface {name} is virtkit's own: it cannot be a network's uplink",
                            hint="give a host NIC, VLAN or veth that nothing else uses")  # fmt: skip
    with session(f"look up interface {name}") as nl:
        link = nl.link(name)
        if link is None:
            raise NotFoundError(f"interface {name} not found on this host", hint="ip -br link lists them")
        if name == "lo" or link.kind in REFUSED_KINDS:
            raise ConflictError(f"interface {name} ({link.kind or 'loopback'}) cannot be an uplink",
                                hint="give a host NIC, VLAN or veth that nothing else uses")  # fmt: skip
        ours = nl.link(bridge)
        if link.master is not None and (ours is None or link.master != ours.index):
            master = next((x.name for x in nl.links() if x.index == link.master), str(link.master))
            raise ConflictError(f"interface {name} is already a port of {master}",
                                hint=f"free it first (ip link set {name} nomaster) or give another one")
        addresses = [str(iface) for _, iface in nl.ipv4(link.index)]
        if addresses:
            raise StateError(
                f"interface {name} has the host's address {', '.join(addresses)}: enslaving it to a "
                "bridge would take that address off the host",
                hint="use a spare NIC, or a veth into a bridge of your own that carries the address",
            )


def attach(name: str, bridge: str) -> None:
    """Make `name` (checked) a port of `bridge`, up; idempotent."""
    check(name, bridge)
    with session(f"attach uplink {name} to {bridge}") as nl:
        link = nl.link(name)
        master = require_bridge(nl, bridge).index
        if link is not None and link.master != master:
            nl.set(link.index, master=master)
            log.info("uplink %s attached to %s", name, bridge)
        if link is not None and not link.up:
            nl.set(link.index, state="up")


def attached(name: str, bridge: str) -> bool:
    """Whether `name` is a port of `bridge` now."""
    with session(f"look up interface {name}") as nl:
        link, ours = nl.link(name), nl.link(bridge)
        return link is not None and ours is not None and link.master == ours.index


def release(name: str, bridge: str, *, down: bool) -> None:
    """Free `name` from `bridge` if it is its port (a missing interface or bridge is fine), and
    set it down again if it was down when it was given (`down`)."""
    with session(f"detach uplink {name} from {bridge}") as nl:
        link, ours = nl.link(name), nl.link(bridge)
        if link is not None and ours is not None and link.master == ours.index:
            nl.set(link.index, master=0)
            if down:
                nl.set(link.index, state="down")
            log.info("uplink %s detached from %s", name, bridge)
