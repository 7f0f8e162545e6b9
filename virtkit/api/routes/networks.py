"""`/1.0/networks`: list, show, create, delete and reconcile networks; their port forwards; NICs of
instances on them.

Reads are the viewer's. Networks and their forwards are the admin's: they change the host's
bridges and firewall. Giving an instance a NIC on a network, or taking it away, is acting on the
instance: the operator's, as launching with `nics` is. Every change here is a moment's work under
the networks lock (a bridge, a dnsmasq, one nft transaction), so it answers at once, with the
same errors the CLI prints: a bad name or subnet 400, an unknown network 404, a taken name,
subnet or host port 409, a network in use 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query

from virtkit.api.bodies import ForwardBody, InstanceRef, NetworkBody, NicBody
from virtkit.api.context import ADMIN, OPERATOR, VIEWER, ApiContext
from virtkit.ops.networks import Networks

router = APIRouter(prefix="/1.0/networks", tags=["networks"])


def networks(ctx: ApiContext) -> Networks:
    return Networks(ctx.root, ctx.store)


@router.get("")
def list_networks(ctx: ApiContext = VIEWER) -> list[dict[str, Any]]:
    """Every network with its state, instances and leases (as `virtkit network list --json`)."""
    return [view.to_dict() for view in networks(ctx).views()]


@router.post("", status_code=201)
def create_network(body: NetworkBody, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """Create a network (bridge vk-NAME, dnsmasq, firewall) and bring it up; its record."""
    body.check()
    record = networks(ctx).create(body.name, type=body.type, subnet=body.subnet, domain=body.dns_domain,
                                  parent=body.parent)  # fmt: skip
    return record.model_dump(mode="json")


@router.post("/reconcile")
def reconcile(ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """Make bridges, dnsmasq and firewall what the store says (after a reboot); what was repaired."""
    return {"repaired": networks(ctx).reconcile()}


@router.get("/{name}")
def get_network(name: str, ctx: ApiContext = VIEWER) -> dict[str, Any]:
    return networks(ctx).view(name).to_dict()


@router.delete("/{name}")
def delete_network(name: str, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """Delete a network no instance has a NIC on (409 otherwise); the record it had."""
    verbs = networks(ctx)
    record = verbs.get(name)
    verbs.delete(record.name)
    return record.model_dump(mode="json")


# --- forwards -----------------------------------------------------------------------------------


@router.get("/{name}/forwards")
def list_forwards(name: str, ctx: ApiContext = VIEWER) -> list[dict[str, Any]]:
    return [forward.model_dump(mode="json") for forward in networks(ctx).get(name).forwards]


@router.post("/{name}/forwards", status_code=201)
def add_forward(name: str, body: ForwardBody, ctx: ApiContext = ADMIN) -> dict[str, Any]:
    """Forward host port `host_port`/`proto` to `instance`'s `port` (nat networks); the network."""
    return networks(ctx).add_forward(name, body.forward()).model_dump(mode="json")


@router.delete("/{name}/forwards/{host_port}")
def remove_forward(
    name: str,
    host_port: int = Path(ge=1, le=65535),
    proto: str = Query("tcp", pattern=r"^(tcp|udp)$"),
    ctx: ApiContext = ADMIN,
) -> dict[str, Any]:
    """Remove the forward of `host_port` (`?proto=udp` for a UDP one); the forward it was."""
    return networks(ctx).remove_forward(name, host_port, proto).model_dump(mode="json")


# --- instances' NICs ----------------------------------------------------------------------------


@router.post("/{name}/attach", status_code=201)
def attach(name: str, body: NicBody, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Give `instance` a NIC on the network (`ip`, `mac`, `limit`, `model`, `allow_host`): a
    stopped one at its next start, a running one at once where its kind allows; the NIC."""
    from virtkit.ops.attach import Attach

    request = body.request(name)
    nic = Attach(ctx.root, ctx.store).attach(request, body.instance, allow_host=body.allow_host)
    return {"instance": body.instance, **nic.model_dump(mode="json")}


@router.post("/{name}/detach")
def detach(name: str, body: InstanceRef, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Take `instance`'s NIC on the network away; the NIC it had."""
    from virtkit.network.addressing import network_name
    from virtkit.ops.attach import Attach

    nic = Attach(ctx.root, ctx.store).detach(network_name(name), body.check())
    return {"instance": body.instance, **nic.model_dump(mode="json")}
