"""The `bridge virtkit` table of the virtkit firewall: anti-spoofing of each instance port, at layer 2.

`nft.render` validates its description and calls `blocks(ports)` for this table's contents; the
two tables are written, checked and applied together (see `virtkit.network.nft`). This module only
turns already validated ports into text.

A bridge-family chain at the bridge's prerouting hook sees every frame that enters a bridge from one
of its ports, whatever its ethertype, before it is forwarded to another port or delivered to the
host: the one place where ARP, IPv4 and everything else from a guest can be judged together. Only
the ports we are given are judged; a device with one of their names is guarded from the moment it
appears on a bridge, since the match is by name and no per-device hook is made.

- ``prerouting`` (priority -300): ``iifname vmap`` sends each port's frames to its ``port_DEV``
  chain; frames from any other device are not ours to judge. -300 runs before the bridge's
  conntrack (-200) and br_netfilter (0), so a spoofed frame never reaches a conntrack table or an
  ``inet`` hook. nft lists that priority back as "dstnat", bridge's name for -300.
- ``port_DEV``: accepts, with the port's own ``ether saddr``, IPv4 from the port's address (from
  0.0.0.0 only DHCP, udp 68 to 67) and ARP whose sender is the port's MAC and address (0.0.0.0 for
  RFC 5227 probes). Everything else is counted and dropped: another source MAC or address, another
  ARP sender, IPv6, VLAN-tagged frames (``ether type`` reads the tag; ``meta protocol`` would read
  the protocol inside it), every other ethertype. A port on a bridged network has no address of
  virtkit's (the LAN's DHCP gives it one): its chain judges the source MAC only, in IPv4 and as
  the ARP sender.
- ``input`` / ``output`` (only with bridged networks): the host itself takes no part in a bridged
  network's LAN. Nothing its bridge would deliver to the host from one of its ports (the uplink,
  an instance's port) gets there (the host would otherwise
  answer ARP for its own addresses there, "ARP flux", and its neighbours would send it traffic
  through the VMs' bridge), and the host sends nothing out of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from virtkit.network.nft import PortRules

FAMILY = "bridge"
PRIORITY = -300
DHCP_FROM_NOBODY = "ip saddr 0.0.0.0 udp sport 68 udp dport 67"
# Ethernet and IPv4 sizes: the ARP sender fields are at the offsets nft reads only for these.
_ARP_ETHER_IPV4 = "arp htype 1 arp ptype ip arp hlen 6 arp plen 4"


def blocks(ports: Sequence[PortRules], lan: Sequence[str] = ()) -> list[list[str]]:
    """The chains of the bridge table for these (validated) ports and the `lan` ports (the
    devices on bridged networks' bridges: uplinks and instance ports), one list of lines per chain."""
    jumps = [f'    "{p.device}" : jump port_{p.device},' for p in ports]  # one a line: diffs stay readable
    dispatch = ["iifname vmap {", *jumps, "}"] if ports else []
    head = [f"type filter hook prerouting priority {PRIORITY}; policy accept;"]
    chains = [_chain("prerouting", head, dispatch), *(_port_chain(p) for p in ports)]
    # Matched by port: `meta ibrname` (the bridge's name) is not in every kernel (6.1 refuses it).
    # Not counted: the host's own IPv6 and ARP chatter on the bridge would count all along.
    if lan:
        names = ", ".join(f'"{name}"' for name in lan)
        chains += [
            _chain("input", [f"type filter hook input priority {PRIORITY}; policy accept;"],
                   [f"iifname {{ {names} }} drop"]),
            _chain("output", [f"type filter hook output priority {PRIORITY}; policy accept;"],
                   [f"oifname {{ {names} }} drop"]),
        ]  # fmt: skip
    return chains


def _chain(name: str, head: Sequence[str], rules: Sequence[str]) -> list[str]:
    return [f"chain {name} {{", *("    " + line for line in [*head, *rules]), "}"]


def _port_chain(port: PortRules) -> list[str]:
    mac = f"ether saddr {port.mac}"
    if not port.ip:  # on a bridged network: the LAN gives the address, only the MAC is the port's
        return _chain(
            f"port_{port.device}",
            [f'comment "anti-spoofing of the instance port on {port.bridge} (bridged: MAC only)"'],
            [
                f"{mac} ether type ip accept",
                f"{mac} ether type arp {_ARP_ETHER_IPV4} arp saddr ether {port.mac} accept",
                "counter drop",
            ],
        )
    return _chain(
        f"port_{port.device}",
        [f'comment "anti-spoofing of the instance port on {port.bridge}"'],
        [
            f"{mac} ether type ip ip saddr {port.ip} accept",
            f"{mac} ether type ip {DHCP_FROM_NOBODY} accept",
            f"{mac} ether type arp {_ARP_ETHER_IPV4} arp saddr ether {port.mac}"
            f" arp saddr ip {{ {port.ip}, 0.0.0.0 }} accept",
            "counter drop",
        ],
    )
