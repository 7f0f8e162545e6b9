"""Request bodies of the images, networks, storage, snapshot and copy routes (pydantic).

What a body's fields can say wrong by their shape (an unknown key, a wrong type, an unknown
choice) is a 422 from pydantic; what only virtkit's own rules can tell (a name that is not a DNS
label, a size that is not one, a subnet that is not private) is checked by the `check()` methods,
with the same functions the CLI reaches through ops/, and is a 400 before any work starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from virtkit.model import Forward
from virtkit.units import validate_name

if TYPE_CHECKING:
    from virtkit.ops.nics import NicRequest

Text = Field(min_length=1, max_length=200)
Port = Field(ge=1, le=65535)
Arch = Literal["x86_64", "aarch64"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- images -------------------------------------------------------------------------------------


class AliasBody(Strict):
    """`POST /1.0/images/REF/aliases`: `virtkit image alias add REF ALIAS`."""

    alias: str = Text

    def check(self) -> str:
        return validate_name(self.alias, what="image alias")


class BuildBody(Strict):
    """`POST /1.0/images/build`: `virtkit image build tiny|debian`."""

    builder: Literal["tiny", "debian"]
    arch: Arch = "x86_64"
    # debian only
    release: str | None = Field(default=None, min_length=1, max_length=32)
    packages: list[str] = Field(default_factory=list, max_length=256)
    flavour: Literal["vm", "container", "both"] = "both"
    refresh: bool = False

    def check(self) -> None:
        from virtkit.errors import SpecError

        if self.builder == "tiny":
            debian = ("release", "packages", "flavour", "refresh")
            given = [key for key in debian if key in self.model_fields_set]
            if given:
                raise SpecError(f"the tiny builder takes no {given[0]}", hint="give only builder and arch")
            return
        from virtkit.images.debian import validate_arch, validate_packages, validate_release

        validate_release(self.release or "bookworm")
        validate_packages(self.packages)
        validate_arch(self.arch)

    def flavours(self) -> tuple[str, ...]:
        return ("vm", "container") if self.flavour == "both" else (self.flavour,)


# --- networks -----------------------------------------------------------------------------------


class NetworkBody(Strict):
    """`POST /1.0/networks`: `virtkit network create NAME [--type] [--subnet] [--dns-domain]
    [--parent]`."""

    name: str = Text
    type: Literal["nat", "isolated", "bridged"] = "nat"
    subnet: str | None = Field(default=None, max_length=64)
    dns_domain: str | None = Field(default=None, max_length=300)
    parent: str | None = Field(default=None, max_length=64)

    def check(self) -> None:
        from virtkit.network import addressing
        from virtkit.network.netlink import check_name

        addressing.network_name(self.name)
        if self.parent is not None:
            check_name(self.parent, "uplink interface name")
        if self.subnet is not None:
            addressing.parse_subnet(self.subnet)
        if self.dns_domain is not None:
            addressing.parse_domain(self.dns_domain)


class ForwardBody(Strict):
    """`POST /1.0/networks/NAME/forwards`: `virtkit network forward add NAME PORT[/PROTO] INSTANCE[:PORT]`."""

    host_port: int = Port
    proto: Literal["tcp", "udp"] = "tcp"
    instance: str = Text
    port: int | None = Field(default=None, ge=1, le=65535)  # default: host_port

    def forward(self) -> Forward:
        instance = validate_name(self.instance)
        return Forward(proto=self.proto, host_port=self.host_port, instance=instance,
                       port=self.port or self.host_port)  # fmt: skip


class NicBody(Strict):
    """`POST /1.0/networks/NAME/attach`: `virtkit network attach NAME INSTANCE [--ip --mac --limit ...]`."""

    instance: str = Text
    ip: str | None = Field(default=None, max_length=64)
    mac: str | None = Field(default=None, max_length=64)
    limit: str | None = Field(default=None, max_length=32)  # as tc writes rates: "10mbit"
    model: Literal["virtio", "e1000"] | None = None
    allow_host: bool = False

    def request(self, network: str) -> NicRequest:
        """The NIC asked for, as the CLI builds it; SpecError for a bad name, MAC or rate."""
        from virtkit.network.addressing import network_name, parse_mac
        from virtkit.network.shaping import parse_rate
        from virtkit.ops.nics import NicRequest

        validate_name(self.instance)
        limit = parse_rate(self.limit) if self.limit is not None else None
        return NicRequest(network_name(network), self.ip, parse_mac(self.mac) if self.mac else None, limit,
                          self.model)  # fmt: skip


class InstanceRef(Strict):
    """A body naming only an instance (`.../detach`)."""

    instance: str = Text

    def check(self) -> str:
        return validate_name(self.instance)


# --- storage ------------------------------------------------------------------------------------


class PoolBody(Strict):
    """`POST /1.0/storage-pools`: `virtkit storage pool create NAME [--driver] [--path]`."""

    name: str = Text
    driver: Literal["dir"] = "dir"
    path: str | None = Field(default=None, min_length=1, max_length=4096)

    def check(self) -> None:
        validate_name(self.name, what="pool name")


LimitKey = Literal[
    "limits.read_iops", "limits.write_iops", "limits.iops",
    "limits.read_bps", "limits.write_bps", "limits.bps",
]  # fmt: skip


class VolumeBody(Strict):
    """`POST /1.0/storage-pools/POOL/volumes`: `virtkit volume create POOL NAME [--size --type --limit-*]`."""

    name: str = Text
    size: int | str = "10GiB"
    type: Literal["block", "filesystem"] = "block"
    limits: dict[LimitKey, str] = Field(default_factory=dict)

    def check(self) -> dict[str, str]:
        """The limits as the volume will store them; SpecError for a bad name, size or limit."""
        from virtkit.ops.storage import volume_size
        from virtkit.storage.limits import parse_value

        validate_name(self.name, what="volume name")
        volume_size(self.size)
        return {key: parse_value(key, value) for key, value in self.limits.items()}


class ResizeBody(Strict):
    """`POST .../volumes/NAME/resize`: `virtkit volume resize POOL NAME SIZE [--force]`."""

    size: int | str
    force: bool = False

    def check(self) -> None:
        from virtkit.ops.storage import volume_size

        volume_size(self.size)


class LimitsBody(Strict):
    """`PATCH .../volumes/NAME`: `virtkit volume set|unset` (a null value unsets that limit)."""

    limits: dict[LimitKey, str | None] = Field(min_length=1)

    def split(self) -> tuple[dict[str, str], list[str]]:
        """(limits to set, parsed; keys to unset); SpecError for a bad value."""
        from virtkit.storage.limits import parse_value

        values: dict[str, str] = {}
        for key, value in self.limits.items():
            if value is not None:
                values[key] = parse_value(key, value)
        return values, [key for key, value in self.limits.items() if value is None]


class VolumeAttachBody(Strict):
    """`POST .../volumes/NAME/attach`: `virtkit volume attach POOL NAME INSTANCE [--path]`."""

    instance: str = Text
    path: str | None = Field(default=None, max_length=1024)  # containers: where it is mounted

    def check(self) -> str:
        from virtkit.ops.volumes import mount_path

        if self.path is not None:
            mount_path(self.path)
        return validate_name(self.instance)


# --- snapshots and copies -----------------------------------------------------------------------


class SnapshotBody(Strict):
    """`POST /1.0/instances/NAME/snapshots`: `virtkit snapshot create NAME [SNAP] [--stateful] [--expiry]`."""

    name: str | None = Field(default=None, min_length=1, max_length=200)  # default: snap0, snap1, ...
    stateful: bool = False
    expiry: int | str | None = None  # seconds, or "7d"

    def check(self) -> int | None:
        """The expiry in seconds; SpecError for a bad snapshot name or duration."""
        from virtkit.ops.schedule import parse_duration

        if self.name is not None:
            validate_name(self.name, what="snapshot name")
        if self.expiry is None:
            return None
        return parse_duration(str(self.expiry) + ("s" if isinstance(self.expiry, int) else ""), what="expiry")


class RestoreBody(Strict):
    """`POST .../snapshots/SNAP/restore`: `virtkit snapshot restore NAME SNAP [--wait]`."""

    wait: bool = False


class CopyBody(Strict):
    """`POST /1.0/instances/NAME/copy`: `virtkit copy NAME TARGET [--full] [--snapshot SNAP]`."""

    target: str = Text
    full: bool = False
    snapshot: str | None = Field(default=None, min_length=1, max_length=200)


class PublishBody(Strict):
    """`POST /1.0/instances/NAME/publish`: `virtkit publish NAME [--alias A] [--snapshot SNAP]`."""

    alias: str | None = Field(default=None, min_length=1, max_length=200)  # default: the instance's name
    snapshot: str | None = Field(default=None, min_length=1, max_length=200)
