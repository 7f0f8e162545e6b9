"""The address plan of virtkit networks: subnets checked and chosen, IPs and MACs handed out, and the
names of bridges and instance ports. Pure: what is in use is passed in.

- A network's bridge is `vk-NAME`; Linux interface names hold 15 characters, so a network's name
  holds 12 at most.
- Subnets are private IPv4 (RFC 1918), /16 to /29, given as their network address. The gateway
  (the host's address on the bridge, where dnsmasq answers) is the first address.
- A chosen subnet is the first free 10.N.M.0/24 from 10.161.0.0 on: free means overlapping no route
  or address of the host and no other virtkit network.
- MACs are 52:54:00:xx:xx:xx (the prefix QEMU and libvirt use; locally administered unicast).
- An instance's NIC number N has the host-side device `vkUUID8nN` (tap or veth host end).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Collection, Iterable

from virtkit.errors import ConflictError, SpecError
from virtkit.units import validate_name

BRIDGE_PREFIX = "vk-"
MAX_NETWORK_NAME = 15 - len(BRIDGE_PREFIX)
MAX_NICS = 16
MIN_PREFIX, MAX_PREFIX = 16, 29
FIRST_CHOICE = ipaddress.IPv4Network("10.161.0.0/24")
MAC_PREFIX = "52:54:00"
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", re.ASCII)
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
# 63 for an instance's own label and its dot, so that every NAME.DOMAIN stays within 253.
MAX_DOMAIN = 253 - 64
PRIVATE = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def parse_domain(value: object) -> str:
    """`value` if it can be a network's DNS domain: dot-separated labels (`virtkit`, `lab.example`)."""
    rule = "dot-separated labels of a-z, 0-9 and '-', such as virtkit or lab.example"
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    if not isinstance(value, str) or not value:
        raise SpecError(f"invalid DNS domain {shown}", hint=f"use {rule}")
    if len(value) > MAX_DOMAIN:
        raise SpecError(f"invalid DNS domain {shown}: longer than {MAX_DOMAIN} characters")
    labels = value.split(".")
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise SpecError(f"invalid DNS domain {shown}", hint=f"use {rule}")
    if labels[-1].isdigit():
        raise SpecError(f"invalid DNS domain {value}: its last label must not be all digits")
    return value


def network_name(name: str) -> str:
    """`name` if it can name a network (a DNS label short enough for its bridge's name)."""
    validate_name(name, what="network name")
    if len(name) > MAX_NETWORK_NAME:
        raise SpecError(
            f"invalid network name {name!r}: {len(name)} characters, and a network's bridge is "
            f"{BRIDGE_PREFIX}NAME, which Linux allows 15 characters",
            hint=f"use a name of at most {MAX_NETWORK_NAME} characters",
        )
    return name


def bridge_of(name: str) -> str:
    return BRIDGE_PREFIX + network_name(name)


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """A subnet as typed (`10.20.30.0/24`), refused with a reason when it cannot be a virtkit network."""
    example = "e.g. 10.20.30.0/24"
    if not isinstance(text, str) or "/" not in text or not text.isascii() or not text.isprintable():
        raise SpecError(f"invalid subnet {text!r}: not an IPv4 network in CIDR form", hint=example)
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        raise SpecError(f"invalid subnet {text!r}: {exc}", hint=example) from None
    if str(net.network_address) != text.split("/", 1)[0]:
        raise SpecError(
            f"invalid subnet {text!r}: it has host bits set", hint=f"did you mean {net.with_prefixlen}?"
        )
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise SpecError(
            f"invalid subnet {text!r}: a network's prefix is /{MIN_PREFIX} to /{MAX_PREFIX}", hint=example
        )
    if not any(net.subnet_of(private) for private in PRIVATE):
        raise SpecError(
            f"invalid subnet {text!r}: not a private range (10/8, 172.16/12, 192.168/16)",
            hint="a virtkit network is masqueraded behind the host: give it private addresses",
        )
    return net


def gateway_of(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return subnet.network_address + 1


def check_free(
    subnet: ipaddress.IPv4Network, host: Iterable[ipaddress.IPv4Network], networks: dict[str, str]
) -> None:
    """ConflictError when `subnet` overlaps a route/address of the host or another virtkit network
    (`networks`: name -> subnet)."""
    for name, other in sorted(networks.items()):
        if other and subnet.overlaps(ipaddress.IPv4Network(other)):
            raise ConflictError(
                f"subnet {subnet} overlaps {other} of network {name!r}",
                hint="choose another subnet, or leave --subnet out to get a free one",
            )
    for used in host:
        if subnet.overlaps(used) and used.prefixlen > 0:
            raise ConflictError(
                f"subnet {subnet} overlaps {used}, which this host already routes",
                hint="choose another subnet, or leave --subnet out to get a free one",
            )


def choose_subnet(host: Collection[ipaddress.IPv4Network], networks: dict[str, str]) -> ipaddress.IPv4Network:
    """The first 10.N.M.0/24 from 10.161.0.0 overlapping nothing in use."""
    taken = [*host, *(ipaddress.IPv4Network(s) for s in networks.values() if s)]
    candidate = FIRST_CHOICE
    last = ipaddress.IPv4Address("10.255.255.0")
    while candidate.network_address <= last:
        if not any(candidate.overlaps(used) for used in taken if used.prefixlen > 0):
            return candidate
        candidate = ipaddress.IPv4Network((int(candidate.network_address) + 256, 24))
    raise ConflictError("no free 10.x.y.0/24 subnet is left on this host", hint="give one with --subnet")


def allocate_ip(subnet: ipaddress.IPv4Network, used: Collection[str], wanted: str | None = None) -> str:
    """`wanted` if it is a free instance address of `subnet`, else (None) the lowest free one."""
    gateway = gateway_of(subnet)
    if wanted is not None:
        try:
            address = ipaddress.IPv4Address(wanted)
        except ValueError:
            raise SpecError(f"invalid IP address {wanted!r}", hint=f"an address of {subnet}") from None
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            raise SpecError(f"{wanted} is not an instance address of {subnet}", hint=f"use one of {subnet}")
        if address == gateway:
            raise SpecError(f"{wanted} is the gateway of {subnet} (the host's own address)")
        if str(address) in used:
            raise ConflictError(f"{wanted} is already given to another instance on {subnet}")
        return str(address)
    for address in subnet.hosts():
        if address != gateway and str(address) not in used:
            return str(address)
    raise ConflictError(f"no address is left in {subnet}", hint="use a network with a bigger subnet")


def parse_mac(text: str) -> str:
    """A MAC as typed (any case, ':' or '-'), lowercase with ':', refused unless unicast and not zero."""
    mac = text.strip().lower().replace("-", ":") if isinstance(text, str) else ""
    if not _MAC_RE.fullmatch(mac):
        raise SpecError(f"invalid MAC address {text!r}", hint="e.g. 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise SpecError(
            f"invalid MAC address {text!r}: a multicast address", hint="the first byte must be even"
        )
    if mac == "00:00:00:00:00:00":
        raise SpecError(f"invalid MAC address {text!r}: all zeros")
    return mac


def random_mac(used: Collection[str] = ()) -> str:
    while True:
        mac = MAC_PREFIX + "".join(f":{b:02x}" for b in secrets.token_bytes(3))
        if mac not in used:
            return mac


def port_device(uuid: str, index: int) -> str:
    """The host-side device of NIC number `index` of the instance with `uuid` (≤ 13 characters)."""
    if not 0 <= index < MAX_NICS:
        raise SpecError(f"an instance has at most {MAX_NICS} NICs")
    return f"vk{uuid.replace('-', '')[:8]}n{index}"
