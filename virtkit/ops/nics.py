"""Instances' NICs: what `--network`, `--publish` and `--network-limit` ask for, the addresses
handed out for them, and the network steps around an instance's start, stop and deletion.

A NIC is allocated once, when the instance is defined: its MAC and IPv4 address are stored with the
instance (stable across restarts; dnsmasq hands out exactly them, the firewall lets nothing else
out). Its host-side device exists only while the instance runs: the driver makes it, and calls
back (`ports_ready`) before the guest runs, so its rate limit is in place before it sends its
first packet (its anti-spoofing rules are there even before its device: they match the device by name).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from virtkit.errors import ConflictError, SpecError
from virtkit.model import Forward, InstanceKind, InstanceRecord, Nic
from virtkit.network import addressing
from virtkit.ops.networks import Networks

log = logging.getLogger(__name__)

NIC_KEYS = ("ip", "mac", "limit", "model")


@dataclass(frozen=True)
class NicRequest:
    """One `--network NAME[,ip=A][,mac=M][,limit=RATE][,model=virtio|e1000]`."""

    network: str
    ip: str | None = None
    mac: str | None = None
    limit: int | None = None
    model: str | None = None


def parse_nic(text: str) -> NicRequest:
    from virtkit.network.shaping import parse_rate

    name, *options = text.split(",")
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in NIC_KEYS or key in values or not value:
            raise SpecError(
                f"invalid --network {text!r}: {option!r} is not one of "
                + ", ".join(k + "=" for k in NIC_KEYS),
                hint="e.g. --network web,ip=10.161.0.10,limit=10mbit",
            )
        values[key] = value
    model = values.get("model")
    if model is not None and model not in ("virtio", "e1000"):
        raise SpecError(f"invalid NIC model {model!r}", hint="use virtio or e1000")
    return NicRequest(
        network=addressing.network_name(name),
        ip=values.get("ip"),
        mac=addressing.parse_mac(values["mac"]) if "mac" in values else None,
        limit=parse_rate(values["limit"]) if "limit" in values else None,
        model=model,
    )


def parse_publish(text: str, instance: str) -> Forward:
    """`HOSTPORT:GUESTPORT[/tcp|udp]` (or `PORT` for the same port on both sides)."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    host, sep, guest = spec.partition(":")
    guest = guest if sep else host
    if proto not in ("tcp", "udp") or not _port(host) or not _port(guest):
        raise SpecError(
            f"invalid port forward {text!r}", hint="use HOSTPORT:GUESTPORT[/tcp|udp], e.g. 8080:80/tcp"
        )
    return Forward(proto=proto, host_port=int(host), instance=instance, port=int(guest))


def _port(text: str) -> bool:
    return text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535


def _check_request(record: InstanceRecord, request: NicRequest, seen: set[str]) -> None:
    """SpecError when `request` cannot be one more NIC of `record` (which has NICs on `seen`)."""
    if request.network in seen:
        raise SpecError(f"{record.name} already has a NIC on network {request.network!r}: one per network")
    if request.model is not None and record.kind is InstanceKind.CONTAINER:
        raise SpecError(
            f"invalid NIC model {request.model!r} for container {record.name}: "
            "a container's NIC is a veth, it has no model",
            hint="leave the model out: it is for VMs only",
        )


class Nics:
    """The network side of an instance's lifecycle."""

    def __init__(self, networks: Networks) -> None:
        self.networks = networks

    def allocate(
        self, record: InstanceRecord, requests: Sequence[NicRequest], *, allow_host: bool = False,
        plan_only: bool = False,
    ) -> list[Nic]:
        """NICs for `requests`, after the record's own: networks found (`default` made on first use,
        unless `plan_only`: then nothing at all is made), addresses handed out. The caller holds the
        networks lock until the record is stored."""
        import ipaddress

        seen = {nic.network for nic in record.nics}
        free = (i for i in range(addressing.MAX_NICS) if i not in {int(n.inner[3:]) for n in record.nics})
        nics: list[Nic] = []
        used_ips: dict[str, set[str]] = {}
        used_macs = {a.nic.mac for a in self.networks.attachments()}
        for request in requests:
            _check_request(record, request, seen)
            seen.add(request.network)
            index = next(free, None)
            if index is None:
                raise SpecError(f"an instance has at most {addressing.MAX_NICS} NICs")
            network = (self.networks.planned if plan_only else self.networks.ensure)(request.network)
            taken = used_ips.setdefault(
                network.name, {a.nic.ip for a in self.networks.attachments(network.name)}
            )
            if network.type == "bridged":
                ip = _bridged(record, request, network.name)
            else:
                ip = addressing.allocate_ip(ipaddress.IPv4Network(network.subnet), taken, request.ip)
            if request.mac is not None and request.mac in used_macs:
                raise ConflictError(f"MAC {request.mac} is already another instance's")
            mac = request.mac or addressing.random_mac(used_macs)
            taken.add(ip)
            used_macs.add(mac)
            nics.append(Nic(
                network=network.name, mac=mac, ip=ip, device=addressing.port_device(record.uuid, index),
                inner=f"eth{index}", model=request.model, limit=request.limit, allow_host=allow_host,
            ))  # fmt: skip
        return nics

    def before_start(self, record: InstanceRecord) -> None:
        """The networks of the instance's NICs up (bridges, dnsmasq) and the firewall in step, as
        after a host reboot: its ports' rules are there before its devices are."""
        if not record.nics:
            return
        with self.networks.lock():
            for name in sorted({nic.network for nic in record.nics}):
                self.networks.up(self.networks.get(name))
            self.networks.refresh_firewall()

    def ports_ready(self, record: InstanceRecord) -> None:
        """The instance's host-side devices exist: their rate limits go on."""
        from virtkit.network import shaping

        for nic in record.nics:
            if nic.limit is not None:
                shaping.limit(nic.device, nic.limit)

    def published(self, record: InstanceRecord, forwards: Sequence[Forward]) -> None:
        """Publish `forwards` on the instance's first NIC's network; all or none."""
        if not forwards:
            return
        if not record.nics:
            raise SpecError("--publish needs a NIC: add --network NAME")
        done: list[Forward] = []
        try:
            for forward in forwards:
                self.networks.add_forward(record.nics[0].network, forward)
                done.append(forward)
        except BaseException:
            for forward in done:
                self.networks.remove_forward(record.nics[0].network, forward.host_port, forward.proto)
            raise

    def forget(self, record: InstanceRecord) -> None:
        """A deleted instance: its forwards and DNS names go from its networks."""
        if record.nics:  # forwards need a NIC
            self.networks.drop_instance(record.name)


def _bridged(record: InstanceRecord, request: NicRequest, network: str) -> str:
    """A NIC on bridged network `network` has no address of virtkit's ("": the LAN's DHCP gives
    it); only a VM's NIC can be there (a container's address is set by virtkit)."""
    if record.kind is not InstanceKind.VM:
        raise SpecError(f"network {network!r} is bridged: only VMs can be on it for now",
                        hint="a container's address is set by virtkit; put it on a nat or isolated network")
    if request.ip:  # "" (as a moved NIC's): none
        raise SpecError(f"network {network!r} is bridged: the LAN behind its uplink gives the addresses",
                        hint="leave ip= out, or configure the address inside the guest")  # fmt: skip
    return ""
