"""The networks of a remote server, shaped as the local ones (ops.networks.Networks).

`RemoteNetworks` has the methods of Networks the CLI calls, with the same return types, rebuilt
from `/1.0/networks` (api/routes/networks.py); `RemoteAttach` those of ops.attach.Attach. Names
are checked here first, by the same rules, so that a bad one fails before any request as it
does locally. The server says whether a network is "up" (bridge and dnsmasq both), not whether
its bridge alone exists: a network that is down and has no dnsmasq is shown with its bridge missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from virtkit.api.remote_common import model_of, seg

if TYPE_CHECKING:
    from virtkit.api.client import Client
    from virtkit.model import Forward, NetworkRecord, Nic
    from virtkit.ops.networks import NetworkView
    from virtkit.ops.nics import NicRequest


def network_of(document: dict[str, Any]) -> NetworkRecord:
    from virtkit.model import NetworkRecord

    return model_of(NetworkRecord, document)


def network_view_of(document: dict[str, Any]) -> NetworkView:
    """A NetworkView rebuilt from its `to_dict()`."""
    from virtkit.model import Nic
    from virtkit.ops.networks import Attachment, NetworkView

    pid = document.get("dnsmasq_pid")
    up = document.get("state") == "up"
    record = network_of(document)
    attachments = [Attachment(str(item["instance"]), model_of(Nic, item)) for item in document["instances"]]
    return NetworkView(record, up, pid, attachments, list(document.get("leases") or []),
                       uplinked=up and record.type == "bridged")  # fmt: skip


def _name(name: str) -> str:
    from virtkit.network.addressing import network_name

    return seg(network_name(name))


class RemoteNetworks:
    """`ops.networks.Networks` through a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, name: str, *, type: str = "nat", subnet: str | None = None,
               domain: str | None = None, parent: str | None = None) -> NetworkRecord:  # fmt: skip
        body = {"name": name, "type": type, "subnet": subnet, "dns_domain": domain, "parent": parent}
        return network_of(self.client.request("POST", "/1.0/networks", json=body))

    def views(self) -> list[NetworkView]:
        return [network_view_of(document) for document in self.client.request("GET", "/1.0/networks")]

    def view(self, name: str) -> NetworkView:
        return network_view_of(self.client.request("GET", f"/1.0/networks/{_name(name)}"))

    def get(self, name: str) -> NetworkRecord:
        return self.view(name).record

    def delete(self, name: str) -> None:
        self.client.request("DELETE", f"/1.0/networks/{_name(name)}")

    def reconcile(self) -> list[str]:
        return [str(line) for line in self.client.request("POST", "/1.0/networks/reconcile")["repaired"]]

    def add_forward(self, name: str, forward: Forward) -> NetworkRecord:
        body = {"host_port": forward.host_port, "proto": forward.proto, "instance": forward.instance,
                "port": forward.port}  # fmt: skip
        return network_of(self.client.request("POST", f"/1.0/networks/{_name(name)}/forwards", json=body))

    def remove_forward(self, name: str, host_port: int, proto: str) -> Forward:
        from virtkit.model import Forward

        path = f"/1.0/networks/{_name(name)}/forwards/{host_port}"
        return Forward.model_validate(self.client.request("DELETE", path, params={"proto": proto}))


class RemoteAttach:
    """`ops.attach.Attach` through a server's API: NICs of instances on a network."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def attach(self, request: NicRequest, instance: str, *, allow_host: bool = False) -> Nic:
        from virtkit.network.shaping import format_rate

        body = {"instance": instance, "ip": request.ip, "mac": request.mac, "model": request.model,
                "limit": format_rate(request.limit) if request.limit else None, "allow_host": allow_host}
        return _nic(self.client.request("POST", f"/1.0/networks/{_name(request.network)}/attach", json=body))

    def detach(self, network: str, instance: str) -> Nic:
        path = f"/1.0/networks/{_name(network)}/detach"
        return _nic(self.client.request("POST", path, json={"instance": instance}))


def _nic(document: dict[str, Any]) -> Nic:
    from virtkit.model import Nic

    return model_of(Nic, document)
