"""Network interfaces on the host, through netlink (pyroute2): the bridges of virtkit networks, the
taps of VMs, the veth pairs of containers, and what the address plan needs to know (which IPv4
networks are in use).

Everything acts on the network namespace of the calling thread (a socket is opened per call), so a
test, or a second virtkit root, can run in a namespace of its own. pyroute2 is untyped: it is met
only through `Netlink`, which turns its messages into `Link` records and its errors into
virtkit's (`ConflictError` when a name is taken, `NotFoundError`, `HostCapabilityError` when the
host lacks a device or the permission, `ToolError` for the rest).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import logging
import os
import platform
import struct

from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from virtkit.errors import ConflictError, HostCapabilityError, NotFoundError, SpecError
from virtkit.network.netlink import (
    Link,
    Netlink,
    check_alias,
    check_id,
    check_mac,
    netlink_error,
    refuse_existing,
    remove_quietly,
    require,
    require_bridge,
    session,
)
from virtkit.network.netlink import (
    check_name as check_name,  # public here too: callers name interfaces through links
)

log = logging.getLogger(__name__)

IFNAMSIZ = 16  # the kernel's buffer, NUL included
_COMPANION = "virtkit:companion "


# --- queries ----------------------------------------------------------------------------------


def exists(name: str) -> bool:
    check_name(name)
    with session(f"look up interface {name}") as nl:
        return nl.link(name) is not None


def alias(name: str) -> str | None:
    """The interface's alias (ifalias; virtkit marks what it made with one), None if none or no interface."""
    check_name(name)
    with session(f"look up interface {name}") as nl:
        link = nl.link(name)
        return link.alias if link else None


def ports_of(bridge: str) -> list[str]:
    """The names of the interfaces enslaved to `bridge`, sorted."""
    check_name(bridge, "bridge name")
    with session(f"list the ports of bridge {bridge}") as nl:
        index = require_bridge(nl, bridge).index
        return sorted(link.name for link in nl.links() if link.master == index)


def stats(name: str) -> dict[str, int]:
    """Byte and packet counters of `name`, as this namespace sees the device (host side)."""
    check_name(name)
    with session(f"read the counters of {name}") as nl:
        counters = require(nl, name).stats
    return {key: counters.get(key, 0) for key in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}


def mtu(name: str) -> int:
    check_name(name)
    with session(f"look up interface {name}") as nl:
        return require(nl, name).mtu


def addresses_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this namespace routes to or has an address in (default route left out),
    sorted and without duplicates: what a new subnet must not overlap."""
    with session("list routes and addresses") as nl:
        found = set(nl.route_destinations())
        found.update(iface.network for _, iface in nl.ipv4())
    found.discard(ipaddress.IPv4Network("0.0.0.0/0"))
    return sorted(found)


# --- changes ----------------------------------------------------------------------------------


def up(name: str) -> None:
    check_name(name)
    with session(f"bring {name} up") as nl:
        nl.set(require(nl, name).index, state="up")


def down(name: str) -> None:
    check_name(name)
    with session(f"bring {name} down") as nl:
        nl.set(require(nl, name).index, state="down")


def set_master(name: str, bridge: str | None) -> None:
    """Enslave `name` to `bridge`, or free it from its bridge when `bridge` is None."""
    check_name(name)
    if bridge is not None:
        check_name(bridge, "bridge name")
    with session(f"attach {name} to {bridge}" if bridge else f"detach {name} from its bridge") as nl:
        link = require(nl, name)
        master = require_bridge(nl, bridge).index if bridge else 0
        nl.set(link.index, master=master)


def delete(name: str) -> None:
    """Remove `name` and its companion (see `create_ifb`); a missing interface is fine. The
    companion is looked up by its derived name, not by a dump of every link: O(1), not O(links)."""
    check_name(name)
    with session(f"delete interface {name}") as nl:
        companion = nl.link(companion_name(name))
        if companion is not None and companion.alias != companion_alias(name):
            companion = None  # a namesake that is not ours
        for link in (nl.link(name), companion):
            if link is None:
                continue
            try:
                nl.remove(link.index)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:  # gone meanwhile is what was asked
                    raise
            log.info("deleted interface %s", link.name)


def enable_forwarding() -> None:
    """net.ipv4.ip_forward=1 in the calling thread's network namespace (the sysctl is per namespace)."""
    path = "/proc/sys/net/ipv4/ip_forward"
    try:
        # /proc/sys/net shows the namespace of the thread that opens it, not that of /proc's mount
        with open(path, "r+", encoding="ascii") as knob:
            if knob.read().strip() == "1":
                return
            knob.seek(0)
            knob.write("1\n")
    except OSError as exc:
        raise HostCapabilityError(
            f"cannot enable IPv4 forwarding ({path}): {exc.strerror}",
            hint="virtkit needs root to run NAT networks",
        ) from exc
    log.info("enabled IPv4 forwarding")


# --- bridges ----------------------------------------------------------------------------------


def _stable_mac(key: str) -> str:
    """A locally administered MAC derived from `key`: a bridge with no explicit MAC takes its
    lowest port's, which changes as instances come and go (and guests' ARP caches go stale); one
    derived from the network's name and address stays the same across reconciles and reboots, and
    is the same on every host that has that network (a VM moved live keeps its gateway's MAC)."""
    digest = hashlib.sha256(key.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _claim(nl: Netlink, link: Link, alias: str) -> None:
    """Refuse an existing `link` that is not this alias's bridge."""
    if link.kind != "bridge":
        raise ConflictError(
            f"interface {link.name} exists and is not a bridge (it is a {link.kind or 'plain'} device)",
            hint=f"remove it (ip link del {link.name}) or give the network another name",
        )
    if link.alias == alias:
        return
    # An alias-less bridge that is down, empty and unaddressed is what a crash between creating a
    # bridge and naming it leaves; taking it over harms nobody. Anything else is someone else's.
    vacant = not link.up and not nl.ipv4(link.index) and not any(x.master == link.index for x in nl.links())
    if link.alias is None and vacant:
        log.info("adopting the vacant bridge %s", link.name)
        return
    owner = f"is marked {link.alias!r}" if link.alias else "was not made by virtkit"
    raise ConflictError(
        f"bridge {link.name} {owner}: it belongs to something else",
        hint="give the network another name, or remove that bridge if nothing uses it",
    )


def _only_address(nl: Netlink, index: int, wanted: ipaddress.IPv4Interface | None) -> None:
    present = [iface for _, iface in nl.ipv4(index)]
    for iface in present:
        if iface != wanted:
            nl.del_ipv4(index, iface)
    if wanted is not None and wanted not in present:
        nl.add_ipv4(index, wanted)


def ensure_bridge(name: str, address: str | None, *, alias: str, mtu: int | None = None) -> None:
    """Make bridge `name` be there, marked `alias`, with `address` ("10.20.30.1/24") its only IPv4
    address (None: no address at all, a bridged network's), STP off and no forward delay (ports
    forward at once), up. Idempotent. An interface of that name that is not a bridge, or a bridge
    marked by another owner, is a ConflictError."""
    check_name(name, "bridge name")
    check_alias(alias)
    wanted = _bridge_address(address) if address is not None else None
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535):
        raise SpecError(f"invalid MTU {mtu!r}: 68 to 65535")
    with session(f"set up bridge {name}") as nl:
        link = nl.link(name)
        made = False
        if link is None:
            try:
                nl.add(
                    ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0,
                    address=_stable_mac(f"{alias.rsplit(':', 1)[-1]} {address or 'bridged'}"),
                )
                made = True
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # made by a concurrent call meanwhile: check it as any other
                    raise
        link = require(nl, name)
        if not made:
            _claim(nl, link, alias)
        try:
            _configure_bridge(nl, link, wanted, alias, mtu)
        except BaseException:
            if made:
                remove_quietly(nl, name)
            raise
    if made:
        log.info("created bridge %s (%s)", name, address)


def _bridge_address(address: str) -> ipaddress.IPv4Interface:
    try:
        wanted = ipaddress.IPv4Interface(address)
    except ValueError:
        raise SpecError(
            f"invalid bridge address {address!r}: an IPv4 address/prefix", hint="10.20.30.1/24"
        ) from None
    if "/" not in address or wanted.ip in (wanted.network.network_address, wanted.network.broadcast_address):
        raise SpecError(
            f"invalid bridge address {address!r}: a host address with its prefix, e.g. 10.20.30.1/24"
        )
    return wanted


def _configure_bridge(
    nl: Netlink, link: Link, wanted: ipaddress.IPv4Interface | None, alias: str, mtu: int | None
) -> None:
    if link.alias != alias:
        nl.set(link.index, ifalias=alias)
    # STP off first: with STP on the kernel refuses a forward delay under 2 s (ERANGE)
    nl.set(link.index, kind="bridge", br_stp_state=0)
    nl.set(link.index, kind="bridge", br_forward_delay=0)
    if mtu is not None:
        nl.set(link.index, mtu=mtu)
    _only_address(nl, link.index, wanted)
    if not link.up:
        nl.set(link.index, state="up")


# --- taps -------------------------------------------------------------------------------------

_TUN = "/dev/net/tun"
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_IFF_TUN_EXCL = 0x8000  # fail if the name exists, rather than attach to it


def _tun_ioctl(nr: int) -> int:
    """_IOW('T', nr, int): the direction bit and size field sit elsewhere on a few architectures."""
    if platform.machine().startswith(("ppc", "mips", "sparc")):
        return (4 << 29) | (4 << 16) | (ord("T") << 8) | nr
    return (1 << 30) | (4 << 16) | (ord("T") << 8) | nr


_TUNSETIFF, _TUNSETPERSIST, _TUNSETOWNER, _TUNSETGROUP = (_tun_ioctl(n) for n in (202, 203, 204, 206))


def _make_tap(name: str, owner: int, group: int | None) -> None:
    """A persistent tap, made with the tun ioctls (there is no netlink request for it; pyroute2's
    stand-in does the same ioctls but drops IFF_TUN_EXCL and turns errors into ECOMM)."""
    try:
        fd = os.open(_TUN, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise HostCapabilityError(
                f"cannot create tap {name}: this host has no /dev/net/tun",
                hint="load the tun module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200)",
            ) from exc
        raise netlink_error(exc.errno or 0, f"create tap {name} (open /dev/net/tun)") from exc
    try:
        flags = _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR | _IFF_TUN_EXCL
        ifreq = struct.pack("16sH22x", name.encode("ascii"), flags)
        fcntl.ioctl(fd, _TUNSETIFF, ifreq)
        fcntl.ioctl(fd, _TUNSETOWNER, owner)
        if group is not None:
            fcntl.ioctl(fd, _TUNSETGROUP, group)
        fcntl.ioctl(fd, _TUNSETPERSIST, 1)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise ConflictError(
                f"cannot create tap {name}: an interface of that name already exists"
            ) from exc
        raise netlink_error(exc.errno or 0, f"create tap {name}") from exc
    finally:
        os.close(fd)


def create_tap(
    name: str, *, bridge: str, owner: int, group: int | None = None, mac: str | None = None
) -> None:
    """A persistent tap `name` (one queue, vnet headers on, so QEMU can use offloads) owned by uid
    `owner` (and gid `group`): only that user's processes may attach to it (virtkit opens it and
    passes QEMU the descriptor: `open_tap`); enslaved to `bridge`, up. A failure leaves nothing."""
    check_name(name)
    check_name(bridge, "bridge name")
    check_id(owner, "tap owner uid")
    if group is not None:
        check_id(group, "tap group gid")
    settings: dict[str, object] = {"address": check_mac(mac)} if mac is not None else {}
    with session(f"create tap {name}") as nl:
        master = require_bridge(nl, bridge)
        refuse_existing(nl, name, "tap")
        _make_tap(name, owner, group)
        try:
            # the bridge's MTU: on a segment of mixed MTUs the larger frames are dropped
            tap = require(nl, name).index
            nl.set(tap, master=master.index, mtu=master.mtu, state="up", **settings)
        except BaseException:
            remove_quietly(nl, name)
            raise
    log.info("created tap %s on %s for uid %d", name, bridge, owner)


def open_tap(name: str) -> int:
    """An open descriptor of existing tap `name` (root attaches whoever owns it), for a process that
    could not open /dev/net/tun itself (QEMU as its own user, `-netdev tap,fd=N`, as libvirt does).
    Not close-on-exec is left to the caller: it is created with O_CLOEXEC."""
    check_name(name)
    try:
        fd = os.open(_TUN, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise netlink_error(exc.errno or 0, f"open tap {name} (open /dev/net/tun)") from exc
    try:
        flags = _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode("ascii"), flags))
    except OSError as exc:
        os.close(fd)
        raise netlink_error(exc.errno or 0, f"open tap {name}") from exc
    return fd


# --- veth pairs -------------------------------------------------------------------------------


def _netns_of(pid: int) -> int:
    """An fd on the network namespace of process `pid`, refused if it is the caller's own."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise SpecError(f"invalid process id {pid!r}")
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"no process {pid}: its network namespace cannot be reached") from None
    except OSError as exc:
        raise netlink_error(exc.errno or 0, f"open the network namespace of process {pid}") from exc
    if os.fstat(fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
        os.close(fd)
        raise SpecError(f"process {pid} is in this network namespace: a container's end must go elsewhere")
    return fd


def create_veth(host: str, *, bridge: str, pid: int, inner: str, mac: str) -> None:
    """A veth pair: `host` enslaved to `bridge` and up; its peer made directly in the network
    namespace of process `pid` (a container's init, from this host's PID namespace), named `inner`,
    with MAC `mac`, left down (whoever configures it inside brings it up: the container's DHCP
    client or network setup). One netlink request makes all of it, so there is no temporary name to
    collide, and a failure leaves nothing behind. Works when a user namespace owns that netns."""
    check_name(host)
    check_name(bridge, "bridge name")
    check_name(inner, "container interface name")
    mac = check_mac(mac)
    ns = _netns_of(pid)
    try:
        with session(f"create veth {host}") as nl:
            master = require_bridge(nl, bridge)
            refuse_existing(nl, host, "veth")
            peer = {"ifname": inner, "net_ns_fd": ns, "address": mac, "mtu": master.mtu}
            try:
                nl.add(ifname=host, kind="veth", master=master.index, mtu=master.mtu, state="up", peer=peer)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST and nl.link(host) is None:
                    raise ConflictError(
                        f"cannot create veth {host}: the namespace of process {pid} already has {inner}"
                    ) from exc
                raise
    finally:
        os.close(ns)
    log.info("created veth %s on %s, %s in the namespace of process %d", host, bridge, inner, pid)


# --- companions (ifb devices of rate limits) --------------------------------------------------


def companion_name(of: str) -> str:
    """The name of the companion of `of`: derived from `of` (so it is found without a dump, and
    after `of` is gone), 15 characters whatever the length of `of`."""
    check_name(of)
    return "vkifb" + hashlib.sha256(of.encode()).hexdigest()[:10]


def companion_alias(of: str) -> str:
    """The alias marking an interface that exists for `of` only, and is deleted with it."""
    return _COMPANION + of


def create_ifb(name: str, *, companion_of: str) -> None:
    """An ifb device `name` (where rate limits shape what `companion_of` receives), up, marked as
    its companion. `name` must be `companion_name(companion_of)` (what `delete` looks for).
    Idempotent; a same-named interface that is not that companion is a ConflictError."""
    check_name(name)
    check_name(companion_of)
    if name != companion_name(companion_of):
        raise SpecError(f"the companion of {companion_of} is {companion_name(companion_of)}, not {name}")
    mark = companion_alias(companion_of)
    with session(f"create ifb {name}") as nl:
        found = nl.link(name)
        made = found is None
        if found is None:
            nl.add(ifname=name, kind="ifb", state="up")
        elif found.kind != "ifb" or found.alias != mark:
            raise ConflictError(f"cannot create ifb {name}: an interface of that name already exists")
        link = require(nl, name)
        try:
            if link.alias != mark:
                nl.set(link.index, ifalias=mark)
            if not link.up:
                nl.set(link.index, state="up")
        except BaseException:
            if made:
                remove_quietly(nl, name)
            raise


def reap_companions() -> list[str]:
    """Delete the companions whose interface is gone (a container's veth dies with its namespace,
    taking nothing of ours with it); returns their names."""
    reaped = []
    with session("remove leftover companion interfaces") as nl:
        every = nl.links()
        names = {link.name for link in every}
        for link in every:
            if (
                link.alias
                and link.alias.startswith(_COMPANION)
                and link.alias[len(_COMPANION) :] not in names
            ):
                with contextlib.suppress(NetlinkError):  # gone meanwhile
                    nl.remove(link.index)
                    reaped.append(link.name)
    if reaped:
        log.info("removed leftover companions %s", ", ".join(reaped))
    return reaped
