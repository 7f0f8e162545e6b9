"""`virtkit network ...`: create, list, show, delete and reconcile networks; attach and detach
instances; publish ports (forwards)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_fields, print_json, print_table
from virtkit.cli.params import INSTANCE_NAME

if TYPE_CHECKING:
    from virtkit.api.remote_networks import RemoteAttach, RemoteNetworks
    from virtkit.ops.attach import Attach
    from virtkit.ops.networks import Networks, NetworkView


def networks() -> Networks | RemoteNetworks:
    """This host's networks, or those of the remote in effect (api/remote_networks.py)."""
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_networks import RemoteNetworks

        return RemoteNetworks(ctx.client())
    from virtkit.ops.networks import Networks

    return Networks(ctx.root, ctx.store())


def attacher() -> Attach | RemoteAttach:
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_networks import RemoteAttach

        return RemoteAttach(ctx.client())
    from virtkit.ops.attach import Attach

    return Attach(ctx.root, ctx.store())


@click.group("network")
def network_group() -> None:
    """Networks instances are on: NAT or isolated bridges with DHCP and DNS, port forwards, and
    bridged networks on a LAN through a host interface."""


@network_group.command("create")
@click.argument("name")
@click.option(
    "--type", "kind", type=click.Choice(["nat", "isolated", "bridged"]), default="nat", show_default=True,
    help="nat: instances reach out through the host; isolated: nothing leaves the bridge; bridged: "
         "instances are on the LAN of --parent (its DHCP gives their addresses).",
)  # fmt: skip
@click.option(
    "--parent", default=None, metavar="IFACE",
    help="bridged: the host interface that becomes the bridge's uplink (a spare NIC, a VLAN, a veth "
         "into your own bridge; it must carry no address).",
)  # fmt: skip
@click.option(
    "--subnet", default=None, metavar="CIDR",
    help="A private IPv4 subnet, e.g. 10.20.30.0/24 (default: a free 10.x.y.0/24).",
)  # fmt: skip
@click.option(
    "--dns-domain", default=None, metavar="DOMAIN",
    help="Instances resolve as NAME and NAME.DOMAIN inside the network.  [default: virtkit]",
)  # fmt: skip
@json_option
def create_command(name: str, kind: str, subnet: str | None, dns_domain: str | None,
                   parent: str | None) -> None:  # fmt: skip
    """Create network NAME (its bridge is vk-NAME) and bring it up."""
    record = networks().create(name, type=kind, subnet=subnet, domain=dns_domain, parent=parent)
    if get_context().json:
        print_json(record.model_dump(mode="json"))
        return
    if record.type == "bridged":
        click.echo(f"Network {record.name} created: bridged, {record.bridge} with uplink {record.parent}; "
                   "its instances take their addresses from that LAN.")  # fmt: skip
        return
    click.echo(f"Network {record.name} created: {record.type}, {record.subnet} on {record.bridge}, "
               f"gateway {record.gateway}.")  # fmt: skip


def _row(view: NetworkView) -> tuple[str, ...]:
    r = view.record
    state = "up" if view.up else "down"
    used = len({a.instance for a in view.attachments})
    return (r.name, r.type, r.subnet or f"(via {r.parent})", r.gateway or "-", r.bridge, state, str(used))


@network_group.command("list")
@json_option
def list_command() -> None:
    """List networks: type, subnet, gateway, bridge, state, instances on it."""
    views = networks().views()
    if get_context().json:
        print_json([view.to_dict() for view in views])
        return
    columns = ["NAME", "TYPE", "SUBNET", "GATEWAY", "BRIDGE", "STATE", "INSTANCES"]
    empty = "No networks. Create one: virtkit network create web"
    print_table(columns, [_row(view) for view in views], empty=empty)


@network_group.command("show")
@click.argument("name")
@json_option
def show_command(name: str) -> None:
    """Show one network: bridge, subnet, gateway, DHCP leases, instances, forwards."""
    view = networks().view(name)
    if get_context().json:
        print_json(view.to_dict())
        return
    r = view.record
    bridge = ("Bridge", f"{r.bridge} ({'up' if view.bridge_up else 'missing: virtkit network reconcile'})")
    if r.type == "bridged":
        uplink = "attached" if view.uplinked else "not attached: virtkit network reconcile"
        fields = [
            ("Name", r.name), ("Type", r.type), bridge, ("Uplink", f"{r.parent} ({uplink})"),
            ("Addresses", "from the LAN behind the uplink (no DHCP, DNS or NAT of virtkit's)"),
        ]  # fmt: skip
    else:
        fields = [
            ("Name", r.name), ("Type", r.type), ("Subnet", r.subnet), ("Gateway", r.gateway), bridge,
            ("DHCP/DNS", f"dnsmasq pid {view.dnsmasq_pid}" if view.dnsmasq_pid else "not running"),
            ("DNS domain", r.domain),
        ]  # fmt: skip
    for a in view.attachments:
        ip = a.nic.ip or "(LAN)"
        fields.append((f"Instance {a.instance}", f"{ip} {a.nic.mac} ({a.nic.inner}, {a.nic.device})"))
    for lease in view.leases:
        expiry = time.strftime("%H:%M:%S", time.localtime(float(str(lease["expiry"]))))
        fields.append((f"Lease {lease['ip']}", f"{lease['mac']} {lease['hostname'] or '-'} until {expiry}"))
    for forward in r.forwards:
        fields.append((f"Forward {forward.label()}", f"{forward.instance}:{forward.port}"))
    print_fields(fields)


@network_group.command("delete")
@click.argument("name")
def delete_command(name: str) -> None:
    """Delete network NAME (refused while an instance has a NIC on it)."""
    networks().delete(name)
    click.echo(f"Network {name} deleted.")


@network_group.command("reconcile")
@json_option
def reconcile_command() -> None:
    """Make bridges, dnsmasq and firewall rules what the store says (after a reboot); idempotent."""
    repaired = networks().reconcile()
    if get_context().json:
        print_json({"repaired": repaired})
        return
    for line in repaired:
        click.echo(line)
    click.echo("Networks reconciled." if repaired else "Networks reconciled: nothing to repair.")


@network_group.command("attach")
@click.argument("network")
@click.argument("instance", type=INSTANCE_NAME)
@click.option("--ip", default=None, metavar="ADDR", help="A fixed IPv4 address (default: the next free).")
@click.option("--mac", default=None, metavar="MAC", help="A fixed MAC address (default: a new 52:54:00:..).")
@click.option("--limit", default=None, metavar="RATE", help="Rate limit each direction, e.g. 10mbit.")
@click.option(
    "--model", type=click.Choice(["virtio", "e1000"]), default=None,
    help="VMs: the NIC's model (e1000 for guests without virtio; q35).  [default: as --devices]",
)  # fmt: skip
@click.option("--allow-host", is_flag=True, help="Let it reach the host's own services.")
@json_option
def attach_command(
    network: str,
    instance: str,
    ip: str | None,
    mac: str | None,
    limit: str | None,
    model: str | None,
    allow_host: bool,
) -> None:
    """Give INSTANCE a NIC on NETWORK: a stopped one at its next start, a running one at once where
    its kind allows (a container: its address set from the host, its default route and DNS left
    where they are; a q35 VM: hot-plugged)."""
    from virtkit.network.addressing import network_name, parse_mac
    from virtkit.network.shaping import parse_rate
    from virtkit.ops.nics import NicRequest

    request = NicRequest(network_name(network), ip, parse_mac(mac) if mac else None,
                         parse_rate(limit) if limit else None, model)  # fmt: skip
    ctx = get_context()
    nic = attacher().attach(request, instance, allow_host=allow_host)
    if ctx.json:
        print_json(nic.model_dump(mode="json"))
        return
    click.echo(f"Instance {instance} attached to {nic.network} as {nic.inner}: {nic.ip}, MAC {nic.mac}.")


@network_group.command("detach")
@click.argument("network")
@click.argument("instance", type=INSTANCE_NAME)
def detach_command(network: str, instance: str) -> None:
    """Take INSTANCE's NIC on NETWORK away: a stopped one's for its next start, a running one's at
    once where its kind allows."""
    nic = attacher().detach(network, instance)
    click.echo(f"Instance {instance} detached from {nic.network} ({nic.inner}, {nic.ip}).")


@network_group.group("forward")
def forward_group() -> None:
    """Port forwards: a host port DNATed to an instance on a nat network."""


@forward_group.command("add")
@click.argument("network")
@click.argument("host_port", metavar="HOSTPORT[/tcp|udp]")
@click.argument("target", metavar="INSTANCE[:PORT]")
def forward_add_command(network: str, host_port: str, target: str) -> None:
    """Forward HOSTPORT on every host address to INSTANCE's PORT (default: the same port)."""
    from virtkit.ops.nics import parse_publish
    from virtkit.units import validate_name

    instance, _, port = target.partition(":")
    spec, _, proto = host_port.partition("/")
    forward = parse_publish(
        f"{spec}:{port or spec}" + (f"/{proto}" if proto else ""), validate_name(instance)
    )
    networks().add_forward(network, forward)
    click.echo(f"Forward {forward.label()} -> {instance}:{forward.port} added on {network}.")


@forward_group.command("list")
@click.argument("network")
@json_option
def forward_list_command(network: str) -> None:
    """List the forwards of NETWORK."""
    record = networks().get(network)
    if get_context().json:
        print_json([f.model_dump(mode="json") for f in record.forwards])
        return
    rows = [(f.label(), f.instance, str(f.port)) for f in record.forwards]
    print_table(["HOST PORT", "INSTANCE", "PORT"], rows, empty=f"No forwards on {record.name}.")


@forward_group.command("remove")
@click.argument("network")
@click.argument("host_port", metavar="HOSTPORT[/tcp|udp]")
def forward_remove_command(network: str, host_port: str) -> None:
    """Remove the forward of HOSTPORT from NETWORK."""
    from virtkit.errors import SpecError

    spec, _, proto = host_port.partition("/")
    if not spec.isdigit() or proto not in ("", "tcp", "udp") or len(spec) > 5:
        raise SpecError(f"invalid host port {host_port!r}", hint="e.g. 8080 or 5353/udp")
    forward = networks().remove_forward(network, int(spec), proto or "tcp")
    click.echo(f"Forward {forward.label()} removed from {network}.")
