"""Networks: create, list, show, delete and reconcile virtkit networks, and keep the host in step.

A network is a record in the store; on the host it is a bridge `vk-NAME` carrying the gateway
address, a dnsmasq serving DHCP and DNS on it (ROOT/networks/NAME/), and its share of virtkit's
firewall (nftables: `inet virtkit` for isolation, host access and NAT, `bridge virtkit` for each
instance port's anti-spoofing; see network/nft.py). The host side is always re-derived from the
store: `up` makes a network's bridge and dnsmasq what the record says (idempotent),
`refresh_firewall` renders both tables from every network, instance NIC and forward and swaps them
in one transaction. After a host reboot `reconcile` (or any instance start) brings everything back.

Every change holds the `host/networks` lock, taken after an instance's lock, never before.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError
from virtkit.model import Forward, InstanceRecord, NetworkRecord, Nic
from virtkit.network import addressing
from virtkit.store import Store

if TYPE_CHECKING:  # imported when used: `virtkit list` needs none of them
    from virtkit.network.dnsmasq import Config
    from virtkit.network.nft import ForwardRules

log = logging.getLogger(__name__)

NETWORKS_DIR = "networks"
DEFAULT_NETWORK = "default"
LOCK = ("host", "networks")
PARENT_WAS_UP = "parent.was_up"  # a bridged network's config: its uplink's state when it was given


@dataclass(frozen=True)
class Attachment:
    """An instance's NIC on a network."""

    instance: str
    nic: Nic

    def to_dict(self) -> dict[str, object]:
        return {"instance": self.instance, **self.nic.model_dump(mode="json")}


@dataclass(frozen=True)
class NetworkView:
    record: NetworkRecord
    bridge_up: bool
    dnsmasq_pid: int | None
    attachments: list[Attachment] = field(default_factory=list)
    leases: list[dict[str, object]] = field(default_factory=list)
    uplinked: bool = False  # a bridged network's uplink is its bridge's port

    @property
    def up(self) -> bool:
        serving = self.uplinked if self.record.type == "bridged" else self.dnsmasq_pid is not None
        return self.bridge_up and serving

    def to_dict(self) -> dict[str, object]:
        data = self.record.model_dump(mode="json")
        data["state"] = "up" if self.up else "down"
        data["dnsmasq_pid"] = self.dnsmasq_pid
        data["instances"] = [a.to_dict() for a in self.attachments]
        data["leases"] = self.leases
        return data


class Networks:
    """The network verbs over one state root."""

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store

    def lock(self) -> AbstractContextManager[None]:
        return self.store.lock(*LOCK)

    def directory(self, name: str) -> Path:
        return self.root / NETWORKS_DIR / name

    def alias(self, name: str) -> str:
        """What marks a bridge as this root's (its ifalias)."""
        return f"virtkit:{self.root}:{name}"

    # --- reading --------------------------------------------------------------------------------

    def get(self, name: str) -> NetworkRecord:
        return self.store.get(NetworkRecord, addressing.network_name(name))

    def attachments(self, name: str | None = None) -> Iterator[Attachment]:
        for record in sorted(self.store.list(InstanceRecord), key=lambda r: r.name):
            for nic in record.nics:
                if name is None or nic.network == name:
                    yield Attachment(record.name, nic)

    def view(self, name: str) -> NetworkView:
        from virtkit.network import links
        from virtkit.network.dnsmasq import Dnsmasq

        record = self.get(name)
        server = Dnsmasq(self.directory(record.name))
        leases: list[dict[str, object]] = [
            {"mac": lease.mac, "ip": lease.ip, "hostname": lease.hostname, "expiry": lease.expiry}
            for lease in server.leases()
        ]
        uplinked = record.type == "bridged" and self._uplinked(record)
        return NetworkView(record, links.exists(record.bridge), server.pid(),
                           list(self.attachments(record.name)), leases, uplinked)  # fmt: skip

    def views(self) -> list[NetworkView]:
        return [self.view(record.name) for record in self.store.list(NetworkRecord)]

    # --- making ---------------------------------------------------------------------------------

    def create(
        self, name: str, *, type: str = "nat", subnet: str | None = None, domain: str | None = None,
        parent: str | None = None,
    ) -> NetworkRecord:
        """Define network `name` and bring it up; a failure leaves neither record nor host changes.
        A bridged network's bridge has `parent` (network/uplink.py) for its uplink."""
        with self.lock():
            planned = self._plan(name, type=type, subnet=subnet, domain=domain, parent=parent)
            record = self.store.create(planned)
            name, chosen = record.name, record.subnet or f"uplink {record.parent}"
            try:
                self.up(record)
                self.refresh_firewall()
            except BaseException:
                self._take_down(record)
                self.store.delete(NetworkRecord, name)
                self._refresh_quietly()
                raise
        log.info("network %s: %s %s on %s", name, type, chosen, record.bridge)
        return record

    def _plan(self, name: str, *, type: str, subnet: str | None, domain: str | None,
              parent: str | None = None) -> NetworkRecord:  # fmt: skip
        """The record `create` would store (validated, its subnet chosen); nothing is changed."""
        from virtkit.network import links

        name = addressing.network_name(name)
        if type not in ("nat", "isolated", "bridged"):
            raise SpecError(f"invalid network type {type!r}", hint="use nat, isolated or bridged")
        if (type == "bridged") != (parent is not None):
            raise SpecError("a bridged network needs its uplink (--parent IFACE), and only it takes one",
                            hint="virtkit network create lan --type bridged --parent eth1")  # fmt: skip
        if type == "bridged" and subnet is not None:
            raise SpecError("a bridged network has no subnet of virtkit's: its LAN gives the addresses")
        wanted = addressing.parse_subnet(subnet) if subnet is not None else None
        domain = addressing.parse_domain(domain if domain is not None else "virtkit")
        if self.store.find(NetworkRecord, name) is not None:
            raise ConflictError(f"network {name!r} already exists")
        bridge = addressing.bridge_of(name)
        if links.exists(bridge):
            raise ConflictError(
                f"an interface named {bridge} already exists on this host",
                hint="another virtkit state root or another tool made it: choose another network name",
            )
        if parent is not None:
            from virtkit.network import uplink

            uplink.check(parent, bridge)
            for other in self.store.list(NetworkRecord):
                if other.parent == parent:
                    raise ConflictError(f"interface {parent} is already the uplink of network {other.name!r}")
            was = {PARENT_WAS_UP: "1" if uplink.is_up(parent) else "0"}  # given back as it was
            return NetworkRecord(name=name, type=type, bridge=bridge, parent=parent, domain=domain,
                                 config=was)  # fmt: skip
        others = {r.name: r.subnet for r in self.store.list(NetworkRecord) if r.subnet}
        in_use = links.addresses_in_use()
        if wanted is not None:
            addressing.check_free(wanted, in_use, others)
            chosen = wanted
        else:
            chosen = addressing.choose_subnet(in_use, others)
        return NetworkRecord(
            name=name, type=type, bridge=bridge, subnet=str(chosen),
            gateway=str(addressing.gateway_of(chosen)), domain=domain,
        )  # fmt: skip

    def planned(self, name: str) -> NetworkRecord:
        """Network `name` as `ensure` would give it, without making `default` when it is missing."""
        name = addressing.network_name(name)
        record = self.store.find(NetworkRecord, name)
        if record is not None or name != DEFAULT_NETWORK:
            return record if record is not None else self.ensure(name)  # ensure: the NotFoundError
        return self._plan(name, type="nat", subnet=None, domain=None)

    def ensure(self, name: str) -> NetworkRecord:
        """Network `name`, made first when it is `default` and does not exist yet (like libvirt's)."""
        name = addressing.network_name(name)
        record = self.store.find(NetworkRecord, name)
        if record is not None:
            return record
        if name != DEFAULT_NETWORK:
            raise NotFoundError(
                f"network {name!r} not found", hint=f"create it: virtkit network create {name}"
            )
        try:
            return self.create(name)
        except ConflictError:  # made meanwhile by another virtkit process
            return self.get(name)

    def delete(self, name: str) -> None:
        """Remove a network that no instance uses: its bridge, dnsmasq and rules, then its record."""
        record = self.get(name)
        with self.lock():
            users = sorted({a.instance for a in self.attachments(record.name)})
            if users:
                raise StateError(
                    f"network {record.name!r} is in use by {', '.join(users)}",
                    hint="delete those instances or detach them first: "
                    f"virtkit network detach {record.name} {users[0]}",
                )
            self._take_down(record)
            self.store.delete(NetworkRecord, record.name)
            self.refresh_firewall()
            shutil.rmtree(self.directory(record.name), ignore_errors=True)
            parent = self.root / NETWORKS_DIR
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()

    # --- the host side ----------------------------------------------------------------------------

    def up(self, record: NetworkRecord) -> None:
        """Make the bridge and dnsmasq of `record` be there as the record says (idempotent)."""
        from virtkit.network import links
        from virtkit.network.dnsmasq import Dnsmasq

        if record.type == "bridged":  # no address, DHCP or NAT of ours: the LAN behind the uplink's
            from virtkit.network import uplink

            links.ensure_bridge(record.bridge, None, alias=self.alias(record.name))
            uplink.attach(record.parent, record.bridge)
            return
        subnet = ipaddress.IPv4Network(record.subnet)
        links.ensure_bridge(
            record.bridge, f"{record.gateway}/{subnet.prefixlen}", alias=self.alias(record.name)
        )
        if record.type == "nat":
            links.enable_forwarding()
        directory = self.directory(record.name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        Dnsmasq(directory).start(self.dnsmasq_config(record))

    def reload(self, name: str) -> None:
        """Tell the network's dnsmasq about the NICs now on it (when it runs)."""
        from virtkit.network.dnsmasq import Dnsmasq

        # Under the networks lock: launches in parallel (several commands, or `apply`) each
        # rewrite the hosts files, and two writers of one file must not cross.
        with self.lock():
            record = self.store.find(NetworkRecord, name)
            if record is None:
                return
            server = Dnsmasq(self.directory(name))
            if server.pid() is not None:
                server.reload(self.dnsmasq_config(record))

    def dnsmasq_config(self, record: NetworkRecord) -> Config:
        from virtkit.network.dnsmasq import Config, Host

        nat = {r.name for r in self.store.list(NetworkRecord) if r.type == "nat"}
        # instance -> (MAC, network) of the NIC that takes its default route and DNS
        primary: dict[str, tuple[str, str]] = {}
        for a in self.attachments():
            if a.instance not in primary or (a.nic.network in nat and primary[a.instance][1] not in nat):
                primary[a.instance] = (a.nic.mac, a.nic.network)
        hosts = tuple(
            Host(a.nic.mac, a.nic.ip, a.instance, primary=primary[a.instance][0] == a.nic.mac)
            for a in self.attachments(record.name)
        )
        return Config(
            network=record.name, bridge=record.bridge, gateway=record.gateway, subnet=record.subnet,
            domain=record.domain, upstream=record.type == "nat", hosts=hosts,
        )  # fmt: skip

    def _take_down(self, record: NetworkRecord) -> None:
        from virtkit.network import links
        from virtkit.network.dnsmasq import Dnsmasq

        Dnsmasq(self.directory(record.name)).stop()
        if links.exists(record.bridge) and links.alias(record.bridge) == self.alias(record.name):
            if record.parent:  # the admin's interface goes back as it was, not with our bridge
                from virtkit.network import uplink

                uplink.release(record.parent, record.bridge, down=record.config.get(PARENT_WAS_UP) == "0")
            links.delete(record.bridge)

    def reconcile(self) -> list[str]:
        """Bring every network up and the firewall in step with the store; what was repaired."""
        from virtkit.network import links, nft
        from virtkit.network.dnsmasq import Dnsmasq

        repaired: list[str] = []
        with self.lock():
            for record in self.store.list(NetworkRecord):
                missing = []
                if not links.exists(record.bridge):
                    missing.append("bridge")
                if record.type == "bridged":  # a bridge made again gets its uplink back: not counted twice
                    if not missing and not self._uplinked(record):
                        missing.append(f"uplink {record.parent}")
                elif Dnsmasq(self.directory(record.name)).pid() is None:
                    missing.append("dnsmasq")
                self.up(record)
                if missing:
                    repaired.append(f"{record.name}: {' and '.join(missing)} restored")
            had_table = nft.present()
            opened = self.refresh_firewall()
            if not had_table and self.store.list(NetworkRecord):
                repaired.append("firewall tables inet virtkit and bridge virtkit restored")
            repaired += [f"{chain} (policy drop) opened to virtkit bridges again" for chain in opened]
        return repaired

    @staticmethod
    def _uplinked(record: NetworkRecord) -> bool:
        from virtkit.network import uplink

        return uplink.attached(record.parent, record.bridge)

    def refresh_firewall(self) -> list[str]:
        """Render virtkit's tables from the store and swap them in (remove them when there is no
        network); the foreign forward chains that had to be opened to our bridges again."""
        from virtkit.network import nft, nftforeign

        with self.lock():
            networks = self.store.list(NetworkRecord)
            if not networks:
                nft.remove()
                nftforeign.close_foreign()
                return []
            by_name = {r.name: r for r in networks}
            net_rules = [
                nft.NetRules(r.name, r.bridge, r.subnet, r.gateway, r.type == "nat", r.type == "bridged",
                             r.parent)
                for r in networks
            ]
            # Every NIC, running or not: a port's rules match its device by name, so they guard
            # it from the moment its device joins the bridge.
            ports = [
                nft.PortRules(
                    a.nic.device, by_name[a.nic.network].bridge, a.nic.mac, a.nic.ip, a.nic.allow_host
                )
                for a in self.attachments()
                if a.nic.network in by_name
            ]
            nft.apply(nft.render(net_rules, ports, self._forward_rules(networks)))
            # A foreign forward chain with policy drop (Docker's) would drop what ours accepts:
            # our bridges are let through there (what we put there before replaced, atomically).
            return nftforeign.open_foreign([r.bridge for r in networks])

    def _forward_rules(self, networks: list[NetworkRecord]) -> list[ForwardRules]:
        from virtkit.network import nft

        nics = {(a.instance, a.nic.network): a.nic for a in self.attachments()}
        rules: list[ForwardRules] = []
        for record in networks:
            for forward in record.forwards:
                nic = nics.get((forward.instance, record.name))
                if nic is not None and record.type == "nat":
                    rules.append(
                        nft.ForwardRules(
                            forward.proto, forward.host_port, nic.ip, forward.port, record.bridge
                        )
                    )
        return rules

    def _refresh_quietly(self) -> None:
        try:
            self.refresh_firewall()
        except Exception as exc:  # undoing: the first failure is the one to report
            log.warning("could not refresh the firewall while undoing: %s", exc)

    # --- forwards -------------------------------------------------------------------------------

    def add_forward(self, name: str, forward: Forward) -> NetworkRecord:
        """Publish `forward` on network `name` (nat only; a host port is published once)."""
        with self.lock():
            record = self.get(name)
            if record.type != "nat":
                raise SpecError(
                    f"network {record.name!r} is isolated: nothing reaches it from outside",
                    hint="publish ports on a nat network",
                )
            if not any(a.instance == forward.instance for a in self.attachments(record.name)):
                raise NotFoundError(f"instance {forward.instance!r} has no NIC on network {record.name!r}")
            for other in self.store.list(NetworkRecord):
                for existing in other.forwards:
                    if (existing.host_port, existing.proto) == (forward.host_port, forward.proto):
                        raise ConflictError(
                            f"host port {forward.label()} is already forwarded to {existing.instance} "
                            f"on network {other.name!r}"
                        )
            record.forwards = [*record.forwards, forward]
            record = self.store.put(record)
            try:
                self.refresh_firewall()
            except BaseException:
                record.forwards = [f for f in record.forwards if f != forward]
                self.store.put(record)
                self._refresh_quietly()
                raise
            return record

    def remove_forward(self, name: str, host_port: int, proto: str) -> Forward:
        with self.lock():
            record = self.get(name)
            found = [f for f in record.forwards if (f.host_port, f.proto) == (host_port, proto)]
            if not found:
                raise NotFoundError(
                    f"network {record.name!r} has no forward of host port {host_port}/{proto}"
                )
            record.forwards = [f for f in record.forwards if f not in found]
            self.store.put(record)
            self.refresh_firewall()
            return found[0]

    def drop_instance(self, instance: str) -> None:
        """Forget what networks hold of a deleted instance: its forwards, its names in dnsmasq."""
        with self.lock():
            for record in self.store.list(NetworkRecord):
                kept = [f for f in record.forwards if f.instance != instance]
                if kept != record.forwards:
                    record.forwards = kept
                    self.store.put(record)
                self.reload(record.name)
            self.refresh_firewall()
