"""What one network's dnsmasq is told, as files: the pure half of `virtkit.network.dnsmasq`.

`render` turns a `Config` into dnsmasq.conf and the two hosts files it re-reads on SIGHUP; every value
is validated first (SpecError), since each ends up in a file dnsmasq parses line by line and must
read there as one token, never as an option. `parse_leases` reads dnsmasq's lease file back.
No side effects: the process that serves these files is `virtkit.network.dnsmasq.Dnsmasq`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import SpecError
from virtkit.network.addressing import parse_domain
from virtkit.units import validate_name

__all__ = ["Config", "DaemonUser", "Host", "Lease", "Rendered", "parse_leases", "render", "validate"]

log = logging.getLogger(__name__)

LEASE_TIME = "1h"
GATEWAY_NAME = "gateway"
SECONDARY = "vk-secondary"  # the dnsmasq tag of NICs that are not their instance's primary one
RESOLV_CONF = "/etc/resolv.conf"

CONF = "dnsmasq.conf"
DHCP_HOSTS = "dhcp-hosts"
DNS_HOSTS = "dns-hosts"
LEASES = "leases"
PIDFILE = "dnsmasq.pid"
LOGFILE = "dnsmasq.log"

# Linux allows more, but a name dnsmasq's config reads as one token, never an option, is enough here.
_IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}", re.ASCII)
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", re.ASCII | re.IGNORECASE)
_PATH_RE = re.compile(r"/[A-Za-z0-9_./+@:~\[\]-]*", re.ASCII)
_LEASE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,253}", re.ASCII)
DIGITS_RE = re.compile(r"[0-9]{1,18}", re.ASCII)  # str.isdigit() takes "²", which int() refuses


@dataclass(frozen=True)
class Host:
    """One instance NIC on the network: its fixed address, and the instance name it answers to.
    `primary`: the instance's NIC that takes its default route and DNS server; the lease of any other
    carries neither, so that an instance on several networks does not race its leases for them."""

    mac: str
    ip: str
    name: str
    primary: bool = True


@dataclass(frozen=True)
class Config:
    """What one network's dnsmasq serves. `upstream`: forward other names to the host's resolvers
    (nat networks); without it only the network's own names are answered (isolated networks)."""

    network: str
    bridge: str
    gateway: str
    subnet: str
    domain: str
    upstream: bool
    hosts: tuple[Host, ...]


@dataclass(frozen=True)
class Lease:
    """One line of dnsmasq's lease file. `expiry` is seconds since the epoch, None for an infinite
    lease; `hostname` is None when the lease has none."""

    expiry: int | None
    mac: str
    ip: str
    hostname: str | None


@dataclass(frozen=True)
class DaemonUser:
    """The user and group dnsmasq becomes after binding its sockets."""

    user: str
    group: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Rendered:
    """The three files a config becomes: dnsmasq.conf and the two hosts files it re-reads on SIGHUP."""

    conf: str
    dhcp_hosts: str
    dns_hosts: str


# --- validation: every value below ends up in a config file dnsmasq parses line by line ---


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _ipv4(value: object, what: str) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.IPv4Address(value) if isinstance(value, str) else None
    except ValueError:
        address = None
    if address is None or str(address) != value:
        raise SpecError(f"invalid {what} {_shown(value)}: not an IPv4 address such as 10.20.30.1")
    return address


def _subnet(value: object) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(value, strict=True) if isinstance(value, str) else None
    except ValueError:
        network = None
    if network is None or str(network) != value:
        raise SpecError(f"invalid subnet {_shown(value)}: not an IPv4 network such as 10.20.30.0/24")
    if not 8 <= network.prefixlen <= 30:
        raise SpecError(f"invalid subnet {value}: the prefix length must be between /8 and /30")
    return network


def _in_subnet(address: ipaddress.IPv4Address, network: ipaddress.IPv4Network, what: str) -> None:
    if address not in network or address in (network.network_address, network.broadcast_address):
        raise SpecError(f"{what} {address} is not a host address of the subnet {network}")


def _mac(value: object) -> str:
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value):
        raise SpecError(f"invalid MAC address {_shown(value)}: use six hex pairs such as 52:54:00:12:34:56")
    mac = value.lower()
    if int(mac[:2], 16) & 1:
        raise SpecError(f"invalid MAC address {mac}: a multicast address cannot be a NIC's")
    if mac == "00:00:00:00:00:00":
        raise SpecError("invalid MAC address 00:00:00:00:00:00")
    return mac


def _bridge(value: object) -> str:
    if not isinstance(value, str) or not _IFNAME_RE.fullmatch(value) or value == "lo":
        raise SpecError(f"invalid bridge name {_shown(value)}: use 1-15 letters, digits, '_', '.' or '-'")
    return value


def validate(config: Config) -> list[tuple[str, str, str]]:
    """Check every value of `config` (SpecError on the first bad one); the hosts as (mac, ip, name)."""
    if not isinstance(config, Config):
        raise SpecError(f"not a dnsmasq Config: {_shown(config)}")
    validate_name(config.network, what="network name")
    _bridge(config.bridge)
    network = _subnet(config.subnet)
    gateway = _ipv4(config.gateway, "gateway address")
    _in_subnet(gateway, network, "the gateway")
    parse_domain(config.domain)
    if not isinstance(config.upstream, bool):
        raise SpecError(f"invalid upstream setting {_shown(config.upstream)}: must be True or False")
    if not isinstance(config.hosts, tuple) or not all(isinstance(host, Host) for host in config.hosts):
        raise SpecError("invalid hosts: a tuple of Host")
    hosts: list[tuple[str, str, str]] = []
    seen: dict[str, str] = {}
    for host in config.hosts:
        mac = _mac(host.mac)
        address = _ipv4(host.ip, f"address of {_shown(host.name)}")
        _in_subnet(address, network, f"the address of {_shown(host.name)}")
        name = validate_name(host.name, what="instance name")
        if not isinstance(host.primary, bool):
            raise SpecError(f"invalid primary setting {_shown(host.primary)}: must be True or False")
        if address == gateway:
            raise SpecError(f"instance {name} cannot have the gateway's address {gateway}")
        if name == GATEWAY_NAME:
            raise SpecError(f"an instance cannot be named {GATEWAY_NAME!r}: on its network the host is")
        for key, what in ((mac, "MAC address"), (str(address), "address"), (name, "name")):
            if key in seen:
                raise SpecError(f"{seen[key]} and {name} have the same {what} {key} "
                                f"on network {config.network}")
            seen[key] = name
        hosts.append((mac, str(address), name))
    return hosts


def _reverse_zones(network: ipaddress.IPv4Network) -> list[str]:
    """The in-addr.arpa zones covering `network`, so lookups of its addresses are never forwarded."""
    octets = -(-network.prefixlen // 8)  # zones are cut on octet boundaries: at most 128 for a /17
    zones = []
    for part in network.subnets(new_prefix=octets * 8):
        head = str(part.network_address).split(".")[:octets]
        zones.append(".".join(reversed(head)) + ".in-addr.arpa")
    return zones


def render(config: Config, directory: Path, user: DaemonUser | None) -> Rendered:
    """The files for `config` with their paths under `directory` (pure; SpecError on bad values).

    `user`: whom dnsmasq becomes after binding; None keeps it root."""
    hosts = validate(config)
    where = str(directory)
    if not _PATH_RE.fullmatch(where) or "//" in where:
        raise SpecError(f"the directory {_shown(where)} holds characters a dnsmasq config cannot carry",
                        hint="use a state root made of letters, digits and . _ - / only")
    network = ipaddress.IPv4Network(config.subnet)
    domain, gateway, bridge = config.domain, config.gateway, config.bridge
    lines = [
        f"# dnsmasq of virtkit network {config.network}: written by virtkit, rewritten at each start",
        "# Serve this bridge's gateway address alone, bound to it: other networks' dnsmasqs and any",
        "# resolver on the host (systemd-resolved, a system dnsmasq) keep their own sockets.",
        f"interface={bridge}",
        f"listen-address={gateway}",
        "except-interface=lo",
        "bind-interfaces",
        f"user={user.user}" if user else "user=root",
        *([f"group={user.group}"] if user else []),
        f"pid-file={where}/{PIDFILE}",
        f"log-facility={where}/{LOGFILE}",
        "# DNS: the network's names from our hosts file only, never the host's /etc/hosts.",
        "no-hosts",
        f"addn-hosts={where}/{DNS_HOSTS}",
        f"domain={domain}",
        "expand-hosts",
        f"local=/{domain}/",
        *(f"local=/{zone}/" for zone in _reverse_zones(network)),
        "domain-needed",  # a name without a dot is the network's or nobody's: never asked upstream
        "bogus-priv",
        "strict-order",
    ]
    if config.upstream:
        lines += [f"resolv-file={RESOLV_CONF}"]
    else:
        lines += ["# Isolated: nothing is forwarded; unknown names are NXDOMAIN at once.",
                  "no-resolv", "no-poll", "local=/#/"]
    lines += [
        "# DHCP: the listed MACs get their fixed address; any other client gets no answer at all.",
        f"dhcp-range={network.network_address},static,{network.netmask},{LEASE_TIME}",
        f"dhcp-hostsfile={where}/{DHCP_HOSTS}",
        "dhcp-ignore=tag:!known",
        "dhcp-ignore-names",  # names come from virtkit, never from what a guest claims
        "dhcp-authoritative",
        f"dhcp-leasefile={where}/{LEASES}",
        f"dhcp-option=option:dns-server,{gateway}",
        # An isolated network gives no default route, so its guests do not try to route off the bridge.
        f"dhcp-option=option:router,{gateway}" if config.upstream else "dhcp-option=option:router",
        "# A NIC that is not its instance's primary one gets no route and no DNS server: those stay",
        "# with the primary NIC, whichever lease comes first.",
        f"dhcp-option=tag:{SECONDARY},option:router",
        f"dhcp-option=tag:{SECONDARY},option:dns-server",
    ]
    # NAME.DOMAIN, not NAME: a bare "ignore" or "infinite" would be read as a keyword. dnsmasq still
    # sends the client NAME as its hostname and DOMAIN as its domain.
    dhcp = "".join(
        f"{mac},{'' if host.primary else f'set:{SECONDARY},'}{ip},{name}.{domain}\n"
        for (mac, ip, name), host in zip(hosts, config.hosts, strict=True)
    )
    dns = f"{gateway} {GATEWAY_NAME}.{domain} {GATEWAY_NAME}\n"
    dns += "".join(f"{ip} {name}.{domain} {name}\n" for _, ip, name in hosts)
    return Rendered("\n".join(lines) + "\n", dhcp, dns)


def parse_leases(text: str) -> list[Lease]:
    """dnsmasq's lease file ("EXPIRY MAC IP HOSTNAME CLIENT-ID" lines); any other line is skipped."""
    leases = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if len(fields) < 4 or fields[0] == "duid":  # "duid": DHCPv6's server id, not a lease
            if fields:
                log.debug("lease file line %d skipped: %r", number, line[:200])
            continue
        expiry, mac, ip, hostname = fields[:4]
        try:
            good_ip = str(ipaddress.IPv4Address(ip)) == ip
        except ValueError:
            good_ip = False
        if not (DIGITS_RE.fullmatch(expiry) and _MAC_RE.fullmatch(mac) and good_ip):
            log.debug("lease file line %d skipped: %r", number, line[:200])
            continue
        seconds = int(expiry)
        name = hostname if hostname != "*" and _LEASE_NAME_RE.fullmatch(hostname) else None
        leases.append(Lease(seconds or None, mac.lower(), ip, name))
    return leases
