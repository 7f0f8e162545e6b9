"""The virtkit firewall: two nftables tables, `inet virtkit` and `bridge virtkit`, applied whole.

`render(networks, ports, forwards)` is a pure function of what exists (networks, instance NICs,
published ports) and returns an `nft -f` script; `apply(script)` loads it in one atomic transaction
that replaces both our tables whether or not they existed (``table F virtkit {}`` / ``delete
table F virtkit`` / ``table F virtkit { ... }`` for each). Nothing else on the host is flushed or
deleted: other tables (Docker's, the administrator's) are left as they are. `remove()` deletes our
two tables, `present()` says whether they are loaded, `check(script)` validates a script without
applying it (``nft -c``).

Why two tables: isolation and NAT are layer 3 and live in ``inet virtkit``; anti-spoofing must
also judge ARP, which no inet hook sees. An inet ingress chain is only given IPv4 and IPv6 (the
kernel accepts every other ethertype before our rules run: measured here, 0 ARP packets seen),
and the inet forward hook sees bridged frames only through br_netfilter, which passes IP and
never ARP. So a guest could claim its gateway's or a peer's address in ARP and poison their
neighbour tables. Per-port anti-spoofing is therefore in ``bridge virtkit``, rendered by
`virtkit.network.nftbridge` (whose docstring has its chains): only frames with the port's MAC
pass, carrying IPv4 from its address (0.0.0.0 only for DHCP, udp 68 to 67) or ARP whose sender is
its MAC and address (0.0.0.0 for probes); all else, IPv6 included, is counted and dropped. It
matches ports by name, so a port may be given before its device exists.

The chains of ``inet virtkit``:

- ``input`` → ``input_BRIDGE`` (input hook, per network): what instances may reach on the host
  itself: replies (established, related), DHCP (udp 67 to the gateway or broadcast), DNS (udp and
  tcp 53) and ping on their own gateway; any host service for ports with ``allow_host``, matched by
  source address (in this hook the interface is the bridge, never the port; the address is
  trustworthy because ``bridge virtkit`` enforces it). Everything else from a bridge is dropped.
- ``forward`` (forward hook): traffic within one bridge is accepted (with br_netfilter loaded,
  as here, bridged frames pass this hook with the bridge as both interfaces); between two virtkit
  bridges it is dropped, whichever way and whatever else says; a nat network may send IPv4
  anywhere else and receive replies and published-port (DNAT) connections; an isolated network
  forwards nothing. Traffic not touching our bridges is not ours to judge (policy accept).
- ``prerouting`` / ``output`` (nat): published ports, DNAT of connections to any local address
  (``fib daddr type local``), from outside and from the host itself. Loopback (127.0.0.0/8) is
  excluded: a packet from 127.0.0.1 rerouted to a bridge is dropped as martian unless
  net.ipv4.conf.*.route_localnet is set, which would expose loopback-only services to the network.
  A published port never joins two networks: from another virtkit bridge, ``forward`` drops the
  DNATed connection like any other. Forwards to isolated networks are refused (SpecError).
- ``postrouting`` (nat): masquerade of a nat network's traffic leaving by another interface.

Foreign firewalls (Docker's forward drop) are `virtkit.network.nftforeign`'s.

Every name, address and port is validated before it is interpolated (SpecError otherwise): an
interface name is 1-15 letters, digits, '_', '.', '-'; addresses are parsed and printed back by
`ipaddress`; a MAC is six hex octets. No value can carry nft syntax into the script.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from virtkit.errors import HostCapabilityError, SpecError, ToolError
from virtkit.network import nftbridge

log = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "virtkit"
TABLES = ((FAMILY, TABLE), (nftbridge.FAMILY, TABLE))  # ours; in this order in every script
COMMENT = "virtkit"  # marks the rules nftforeign.open_foreign adds to other tables, and only those
NFT_TIMEOUT = 20.0
STDERR_TAIL = 2000

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_NETNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_PROTO = re.compile(r"tcp|udp")
_LOOPBACK = "127.0.0.0/8"


@dataclass(frozen=True)
class NetRules:
    """A virtkit network: its bridge, subnet, the host's address on it, and whether it is NATed."""

    name: str
    bridge: str
    subnet: str
    gateway: str
    nat: bool  # False: isolated, nothing is forwarded to or from the bridge
    # a bridged network (subnet and gateway ""): its bridge's uplink is on a LAN; the host has no
    # address on it, takes nothing from it and routes nothing to or from it
    bridged: bool = False
    uplink: str = ""  # a bridged network's: the host interface that is its bridge's port


@dataclass(frozen=True)
class PortRules:
    """One instance NIC: the host-side device (tap or veth end) enslaved to `bridge`."""

    device: str
    bridge: str
    mac: str  # the only source MAC allowed from it
    ip: str  # the only IPv4 source allowed from it (0.0.0.0 only for DHCP)
    allow_host: bool  # may reach every service of the host, not only DHCP/DNS/ping on its gateway


@dataclass(frozen=True)
class ForwardRules:
    """A published port: `proto` `host_port` on every local address goes to `ip`:`port`."""

    proto: str
    host_port: int
    ip: str
    port: int
    bridge: str


# ---------------------------------------------------------------- validation
# Nothing a caller gave reaches the script as it was given: strings are replaced by the plain `str`
# of their regex match, addresses re-printed by `ipaddress`, numbers by `int`. A str subclass with a
# creative __format__ therefore cannot smuggle anything past the checks.


def _matched(pattern: re.Pattern[str], value: object) -> str | None:
    match = pattern.fullmatch(value) if isinstance(value, str) else None
    return match.group(0) if match else None


def ifname(value: object, what: str) -> str:
    name = _matched(_IFNAME, value)
    if name is None:
        raise SpecError(
            f"invalid interface name {value!r} for {what}",
            hint="use 1-15 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    return name


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{what} must be true or false, not {value!r}")
    return value


def _ipv4(value: object, what: str) -> ipaddress.IPv4Address:
    try:
        if not isinstance(value, str):
            raise ValueError
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise SpecError(
            f"invalid IPv4 address {value!r} for {what}", hint="write it like 10.20.30.5"
        ) from None


def _subnet(value: object, what: str) -> ipaddress.IPv4Network:
    try:
        if not isinstance(value, str):
            raise ValueError
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError:
        raise SpecError(
            f"invalid IPv4 subnet {value!r} for {what}", hint="write it like 10.20.30.0/24"
        ) from None
    if net.prefixlen > 30:
        raise SpecError(f"subnet {net} for {what} is too small", hint="use a prefix of /30 or shorter")
    return net


def _mac(value: object, what: str) -> str:
    mac = _matched(_MAC, str.lower(value) if isinstance(value, str) else None)
    if mac is None or int(mac[:2], 16) & 1:
        raise SpecError(
            f"invalid MAC address {value!r} for {what}", hint="a unicast MAC like 52:54:00:12:34:56"
        )
    return mac


def _port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise SpecError(f"invalid port {value!r} for {what}", hint="a port is a number from 1 to 65535")
    return int.__int__(value)


def _host_in(ip: ipaddress.IPv4Address, net: ipaddress.IPv4Network, what: str) -> None:
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        raise SpecError(f"{what} {ip} is not a host address of subnet {net}")


def _valid_networks(networks: Iterable[NetRules]) -> list[NetRules]:
    checked: dict[str, NetRules] = {}
    subnets: list[tuple[ipaddress.IPv4Network, str]] = []
    for n in networks:
        name = _matched(_NETNAME, n.name)
        if name is None:
            raise SpecError(
                f"invalid network name {n.name!r}", hint="letters, digits, '_', '.', '-' (max 63)"
            )
        what = f"network {name}"
        bridge = ifname(n.bridge, f"the bridge of {what}")
        if bridge in checked:
            raise SpecError(f"networks {checked[bridge].name} and {name} both use bridge {bridge}")
        if _bool(n.bridged, f"bridged of {what}"):
            if n.subnet or n.gateway or n.nat:
                raise SpecError(f"{what} is bridged: it has no subnet, gateway or NAT of virtkit's")
            uplink = ifname(n.uplink, f"the uplink of {what}")
            checked[bridge] = NetRules(name, bridge, "", "", False, True, uplink)
            continue
        subnet = _subnet(n.subnet, what)
        gateway = _ipv4(n.gateway, f"the gateway of {what}")
        _host_in(gateway, subnet, f"the gateway of {what}")
        for other, other_name in subnets:
            if subnet.overlaps(other):
                raise SpecError(
                    f"the subnets of networks {other_name} ({other}) and {name} ({subnet}) overlap"
                )
        subnets.append((subnet, name))
        checked[bridge] = NetRules(name, bridge, str(subnet), str(gateway), _bool(n.nat, f"nat of {what}"))
    return sorted(checked.values(), key=lambda n: n.bridge)


def _valid_ports(ports: Iterable[PortRules], nets: dict[str, NetRules]) -> list[PortRules]:
    checked: dict[str, PortRules] = {}
    for p in ports:
        device = ifname(p.device, "an instance port")
        what = f"port {device}"
        bridge = ifname(p.bridge, f"the bridge of {what}")
        net = nets.get(bridge)
        if net is None:
            raise SpecError(f"{what} is on bridge {bridge}, which is no virtkit network's")
        if device in nets or device in checked:
            raise SpecError(f"device {device} is given twice (as a port or a bridge)")
        if net.bridged:  # the LAN gives its address: only its MAC is judged
            if p.ip:
                raise SpecError(f"{what} is on bridged network {net.name}: virtkit gives it no address")
            checked[device] = PortRules(device, bridge, _mac(p.mac, what), "", False)
            continue
        ip = _ipv4(p.ip, f"the address of {what}")
        _host_in(ip, ipaddress.IPv4Network(net.subnet), f"the address of {what}")
        if str(ip) == net.gateway:
            raise SpecError(f"{what} has address {ip}, the gateway of network {net.name}")
        mac = _mac(p.mac, what)
        for other in checked.values():
            if other.bridge == bridge and (other.ip == str(ip) or other.mac == mac):
                raise SpecError(f"ports {other.device} and {device} share an address on network {net.name}")
        checked[device] = PortRules(
            device, bridge, mac, str(ip), _bool(p.allow_host, f"allow_host of {what}")
        )
    return sorted(checked.values(), key=lambda p: p.device)


def _valid_forwards(forwards: Iterable[ForwardRules], nets: dict[str, NetRules]) -> list[ForwardRules]:
    checked: dict[tuple[str, int], ForwardRules] = {}
    for f in forwards:
        proto = _matched(_PROTO, f.proto)
        if proto is None:
            raise SpecError(f"invalid protocol {f.proto!r} for a published port", hint="use tcp or udp")
        host_port = _port(f.host_port, "a published port")
        what = f"published port {host_port}/{proto}"
        bridge = ifname(f.bridge, f"the bridge of {what}")
        net = nets.get(bridge)
        if net is None or not net.nat:
            raise SpecError(f"{what} targets bridge {bridge}, which is no nat virtkit network")
        ip = _ipv4(f.ip, f"the target of {what}")
        _host_in(ip, ipaddress.IPv4Network(net.subnet), f"the target of {what}")
        if (proto, host_port) in checked:
            raise SpecError(f"{what} is published twice")
        checked[(proto, host_port)] = ForwardRules(proto, host_port, str(ip), _port(f.port, what), bridge)
    return sorted(checked.values(), key=lambda f: (f.proto, f.host_port))


# ---------------------------------------------------------------- rendering


def render(networks: Sequence[NetRules], ports: Sequence[PortRules], forwards: Sequence[ForwardRules]) -> str:
    """The whole `nft -f` script for this description; the same description always gives the same text.

    Raises SpecError for any invalid or inconsistent value (see the module docstring).
    """
    nets = _valid_networks(networks)
    by_bridge = {n.bridge: n for n in nets}
    valid_ports = _valid_ports(ports, by_bridge)
    valid_forwards = _valid_forwards(forwards, by_bridge)
    inet = [
        _bridges_set(nets),
        _input_chain(nets),
        *(_input_net_chain(n, [p for p in valid_ports if p.bridge == n.bridge]) for n in nets),
        _forward_chain(nets),
        *_nat_chains(nets, valid_forwards),
    ]
    return (
        "# virtkit firewall, generated by virtkit.network.nft: do not edit\n"
        + _table(FAMILY, inet)
        + _table(nftbridge.FAMILY, nftbridge.blocks(valid_ports, _lan_ports(nets, valid_ports)))
    )


def _lan_ports(nets: Sequence[NetRules], ports: Sequence[PortRules]) -> list[str]:
    """Every device on a bridged network's bridge: its uplink, its instances' ports."""
    lans = {n.bridge: n.uplink for n in nets if n.bridged}
    return sorted({*lans.values(), *(p.device for p in ports if p.bridge in lans)})


def _table(family: str, blocks: Sequence[Sequence[str]]) -> str:
    """Our table of this family, replaced whole: created if missing so that the delete cannot fail."""
    body = "\n\n".join("\n".join("    " + line for line in block) for block in blocks)
    table = f"{family} {TABLE}"
    return f"table {table} {{}}\ndelete table {table}\ntable {table} {{\n{body}\n}}\n"


def _chain(name: str, head: Sequence[str], rules: Sequence[str]) -> list[str]:
    return [f"chain {name} {{", *("    " + h for h in head), *("    " + r for r in rules), "}"]


def _names(values: Iterable[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def _bridges_set(nets: Sequence[NetRules]) -> list[str]:
    elements = [f"    elements = {{ {_names(n.bridge for n in nets)} }}"] if nets else []
    return ["set bridges {", "    type ifname", *elements, "}"]


def _input_chain(nets: Sequence[NetRules]) -> list[str]:
    rules = [f'iifname "{n.bridge}" jump input_{n.bridge}' for n in nets]
    return _chain("input", ["type filter hook input priority filter; policy accept;"], rules)


def _input_net_chain(net: NetRules, ports: Sequence[PortRules]) -> list[str]:
    if net.bridged:  # the host has no address there: nothing that comes from it is for the host
        return _chain(f"input_{net.bridge}", [f'comment "bridged network {net.name}: not the host\'s"'],
                      ["counter drop"])  # fmt: skip
    gw = net.gateway
    rules = [
        "ct state established,related accept",
        f"ip daddr {{ {gw}, 255.255.255.255 }} udp dport 67 accept",
        f"ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 accept",
        f"ip daddr {gw} icmp type echo-request accept",
    ]
    trusted = [p.ip for p in ports if p.allow_host]
    if trusted:
        rules.append(f"ip saddr {{ {', '.join(trusted)} }} accept")
    rules.append("counter drop")
    return _chain(f"input_{net.bridge}", [f'comment "what network {net.name} may reach on the host"'], rules)


def _forward_chain(nets: Sequence[NetRules]) -> list[str]:
    rules = [f'iifname "{n.bridge}" oifname "{n.bridge}" accept' for n in nets]
    rules += [
        "iifname @bridges oifname @bridges drop",
        "iifname @bridges ct state invalid drop",
        "oifname @bridges ct state invalid drop",
    ]
    for n in (n for n in nets if n.nat):
        rules += [
            f'oifname "{n.bridge}" ct state established,related accept',
            f'oifname "{n.bridge}" ct status dnat accept',
            f'iifname "{n.bridge}" meta nfproto ipv4 accept',
        ]
    rules += ["iifname @bridges drop", "oifname @bridges drop"]
    return _chain("forward", ["type filter hook forward priority filter; policy accept;"], rules)


def _nat_chains(nets: Sequence[NetRules], forwards: Sequence[ForwardRules]) -> list[list[str]]:
    dnat = [
        f"fib daddr type local {f.proto} dport {f.host_port} dnat ip to {f.ip}:{f.port}" for f in forwards
    ]
    masquerade = [f'ip saddr {n.subnet} oifname != "{n.bridge}" masquerade' for n in nets if n.nat]
    # Output nat chains take no named priority in nft 1.0.6; -100 is dstnat's value.
    return [
        _chain("prerouting", ["type nat hook prerouting priority dstnat; policy accept;"], dnat),
        _chain(
            "output",
            ["type nat hook output priority -100; policy accept;"],
            [f"ip daddr != {_LOOPBACK} {rule}" for rule in dnat],
        ),
        _chain("postrouting", ["type nat hook postrouting priority srcnat; policy accept;"], masquerade),
    ]


# ---------------------------------------------------------------- running nft


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= STDERR_TAIL else "..." + text[-STDERR_TAIL:]


def _run(args: Sequence[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    argv = ["nft", *args]
    log.debug("running %s", " ".join(argv))
    try:
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=NFT_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise HostCapabilityError(
            "nft is not installed on this host", hint="install it: apt-get install nftables"
        ) from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"nft did not finish within {NFT_TIMEOUT:g} s", argv=argv) from None
    except OSError as exc:
        raise ToolError(f"cannot run nft: {exc.strerror}", argv=argv) from None


def run_nft(args: Sequence[str], what: str, stdin: str = "") -> str:
    done = _run(args, stdin)
    if done.returncode != 0:
        err = _tail(done.stderr or done.stdout)
        errors = [line for line in err.splitlines() if "Error:" in line]
        reason = (errors or err.splitlines() or ["no message"])[0]
        raise ToolError(
            f"{what}: nft failed (exit {done.returncode}): {reason}",
            argv=["nft", *args],
            returncode=done.returncode,
            stderr=err,
            hint="nothing was changed: an nft script is applied whole or not at all",
        )
    return done.stdout


def apply(script: str) -> None:
    """Load a script from `render` in one transaction; ToolError (and nothing changed) on failure."""
    run_nft(["-f", "-"], "applying the virtkit firewall", script)
    log.info("virtkit firewall applied (tables %s)", ", ".join(f"{f} {t}" for f, t in TABLES))


def check(script: str) -> None:
    """Validate a script against the running kernel without applying it; ToolError if it would fail."""
    run_nft(["-c", "-f", "-"], "checking the virtkit firewall", script)


def remove() -> None:
    """Delete both our tables, those that exist, in one transaction; nothing else. Idempotent."""
    script = "".join(f"table {f} {t} {{}}\ndelete table {f} {t}\n" for f, t in TABLES)
    run_nft(["-f", "-"], "removing the virtkit firewall", script)
    log.info("virtkit firewall removed")


def present() -> bool:
    """Whether our firewall is loaded: both tables (`apply` never loads one without the other)."""
    listed = set(run_nft(["list", "tables"], "listing the host's nftables tables").splitlines())
    return all(f"table {f} {t}" in listed for f, t in TABLES)
