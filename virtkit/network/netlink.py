"""The netlink boundary of `virtkit.network.links`: pyroute2 met in one place, typed.

pyroute2 is untyped: `Netlink` turns its messages into `Link` records, and `session` turns its
errors and the kernel's into virtkit's (`ConflictError` when a name is taken, `NotFoundError`,
`HostCapabilityError` when the host lacks a device or the permission, `ToolError` for the rest).
Also the checks every value passes before it reaches the kernel. A session opens a socket in the
network namespace of the calling thread.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from virtkit.errors import ConflictError, HostCapabilityError, NotFoundError, SpecError, ToolError

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"[!-~]{1,15}", re.ASCII)  # printable ASCII, no space
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", re.ASCII)
IFALIASZ = 255
_IFF_UP = 0x1
_ROUTE_SKIPPED_TYPES = {2, 3, 4, 5}  # local, broadcast, anycast, multicast: the kernel's own
_LOCAL_TABLE = 255
_NAME_RULES = "1 to 15 printable ASCII characters, none of '/', ':', and not '.' or '..'"


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    master: int | None
    alias: str | None
    up: bool
    mtu: int
    stats: dict[str, int]


# --- validation -------------------------------------------------------------------------------


def check_name(name: str, what: str = "interface name") -> str:
    """`name` if Linux takes it as an interface name (and every tool prints it unquoted), else SpecError."""
    if (
        not isinstance(name, str)
        or not _NAME_RE.fullmatch(name)
        or "/" in name
        or ":" in name
        or name in (".", "..")
    ):
        raise SpecError(f"invalid {what} {name!r}: an interface name is {_NAME_RULES}")
    return name


def check_mac(mac: str) -> str:
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac.lower()):
        raise SpecError(
            f"invalid MAC address {mac!r}: six hex pairs separated by ':'", hint="52:54:00:12:34:56"
        )
    mac = mac.lower()
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise SpecError(f"invalid MAC address {mac}: a NIC needs a unicast address (even first octet)")
    return mac


def check_alias(text: str) -> str:
    if not isinstance(text, str) or not text or "\0" in text or len(text.encode()) > IFALIASZ:
        raise SpecError(f"invalid interface alias {text!r}: 1 to {IFALIASZ} bytes, no NUL")
    return text


def check_id(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32 - 1:
        raise SpecError(f"invalid {what} {value!r}: a number from 0 to {2**32 - 2}")
    return value


# --- the netlink boundary ---------------------------------------------------------------------


def netlink_error(code: int, what: str) -> Exception:
    """A virtkit error for errno `code` met while doing `what` ("create bridge vk-x")."""
    reason = os.strerror(code) if code else "unknown error"
    if code == errno.EEXIST:
        return ConflictError(f"cannot {what}: an interface of that name already exists")
    if code in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
        return NotFoundError(f"cannot {what}: no such interface")
    if code in (errno.EPERM, errno.EACCES):
        return HostCapabilityError(
            f"cannot {what}: permission denied", hint="virtkit needs root (CAP_NET_ADMIN) to manage networks"
        )
    if code in (errno.EOPNOTSUPP, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
        return HostCapabilityError(f"cannot {what}: not supported by this kernel ({reason})")
    return ToolError(f"cannot {what}: {reason} (netlink error {code})")


class Netlink:
    """The few rtnetlink requests virtkit makes, typed; one socket in the caller's namespace."""

    def __init__(self, ipr: Any) -> None:
        self._ipr = ipr

    @staticmethod
    def _link(msg: Any) -> Link:
        stats = msg.get("stats64") or {}
        return Link(
            index=int(msg["index"]),
            name=str(msg.get("ifname")),
            kind=msg.get(("linkinfo", "kind")),
            master=msg.get("master") or None,
            alias=msg.get("ifalias") or None,
            up=bool(msg["flags"] & _IFF_UP),
            mtu=int(msg.get("mtu") or 0),
            stats={k: int(v) for k, v in stats.items() if isinstance(v, int)},
        )

    def link(self, name: str) -> Link | None:
        try:
            msgs = self._ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return self._link(msgs[0]) if msgs else None

    def links(self) -> list[Link]:
        return [self._link(msg) for msg in self._ipr.link("dump")]

    def add(self, **attrs: object) -> None:
        self._ipr.link("add", **attrs)

    def set(self, index: int, **attrs: object) -> None:
        self._ipr.link("set", index=index, **attrs)

    def remove(self, index: int) -> None:
        self._ipr.link("del", index=index)

    def ipv4(self, index: int | None = None) -> list[tuple[int, ipaddress.IPv4Interface]]:
        """(ifindex, address/prefix) of the IPv4 addresses of `index`, or of every interface."""
        found = []
        for msg in self._ipr.addr("dump", family=socket.AF_INET):
            if index is None or msg["index"] == index:
                iface = ipaddress.IPv4Interface(f"{msg.get('address')}/{msg['prefixlen']}")
                found.append((int(msg["index"]), iface))
        return found

    def add_ipv4(self, index: int, iface: ipaddress.IPv4Interface) -> None:
        broadcast = str(iface.network.broadcast_address) if iface.network.prefixlen < 31 else None
        extra = {"broadcast": broadcast} if broadcast else {}
        self._ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra)

    def del_ipv4(self, index: int, iface: ipaddress.IPv4Interface) -> None:
        self._ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def route_destinations(self) -> list[ipaddress.IPv4Network]:
        found = []
        for msg in self._ipr.route("dump", family=socket.AF_INET):
            table = msg.get("table") or msg["table"]
            if table == _LOCAL_TABLE or msg["type"] in _ROUTE_SKIPPED_TYPES:
                continue
            found.append(ipaddress.IPv4Network(f"{msg.get('dst') or '0.0.0.0'}/{msg['dst_len']}"))
        return found


@contextlib.contextmanager
def session(what: str) -> Iterator[Netlink]:
    """A `Netlink` for the block; pyroute2's and the kernel's errors translated, naming `what`."""
    try:
        with IPRoute() as ipr:
            yield Netlink(ipr)
    except NetlinkError as exc:
        raise netlink_error(exc.code, what) from exc
    except OSError as exc:
        raise netlink_error(exc.errno or 0, what) from exc


def require(nl: Netlink, name: str) -> Link:
    link = nl.link(name)
    if link is None:
        raise NotFoundError(f"no interface named {name} on this host")
    return link


def require_bridge(nl: Netlink, name: str) -> Link:
    link = nl.link(name)
    if link is None:
        raise NotFoundError(
            f"no bridge named {name} on this host",
            hint="bring its network up first (virtkit network reconcile)",
        )
    if link.kind != "bridge":
        raise ConflictError(f"interface {name} is not a bridge (it is a {link.kind or 'plain'} device)")
    return link


def refuse_existing(nl: Netlink, name: str, what: str) -> None:
    if nl.link(name) is not None:
        raise ConflictError(
            f"cannot create {what} {name}: an interface of that name already exists",
            hint=f"remove it (ip link del {name}) if nothing uses it",
        )


def remove_quietly(nl: Netlink, name: str) -> None:
    """Undo of a half-made interface: best effort, the original error is the one to report."""
    try:
        link = nl.link(name)
        if link is not None:
            nl.remove(link.index)
    except (NetlinkError, OSError):
        log.warning("could not remove the half-made interface %s", name, exc_info=True)
