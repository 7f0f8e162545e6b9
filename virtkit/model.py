"""Typed records of what virtkit keeps in its store, and the size and name rules they obey.

Records are pydantic models: validated when made and when read back, serialised to JSON for the
store. Each record class names its store table and key fields (`TABLE`, `KEY`); the store uses those
and nothing else, so a new record kind is a new class plus a schema migration.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from virtkit.units import (
    MAX_SIZE,
    EiB,
    GiB,
    KiB,
    MiB,
    PiB,
    TiB,
    format_size,
    parse_size,
    validate_name,
)

__all__ = [
    "MAX_SIZE",
    "EiB",
    "Forward",
    "GiB",
    "ImageRecord",
    "InstanceKind",
    "InstanceRecord",
    "InstanceState",
    "KiB",
    "LayerId",
    "MiB",
    "Name",
    "NetworkRecord",
    "Nic",
    "OperationRecord",
    "OperationStatus",
    "PiB",
    "PoolRecord",
    "Record",
    "Role",
    "SnapshotRecord",
    "StackRecord",
    "TiB",
    "TokenRecord",
    "VolumeAttachment",
    "VolumeRecord",
    "VolumeSnapshotRecord",
    "VolumeType",
    "format_size",
    "parse_size",
    "validate_name",
]


Name = Annotated[str, AfterValidator(validate_name)]
# A shared read-only layer under ROOT/layers/ (see docs/clones.md): a uuid4 without dashes.
LayerId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


def _now() -> float:
    return time.time()


class Record(BaseModel):
    """Base of every stored record: strict fields, timestamps in seconds since the epoch."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    TABLE: ClassVar[str]
    KEY: ClassVar[tuple[str, ...]]

    created_at: float = Field(default_factory=_now)
    updated_at: float = Field(default_factory=_now)

    def key(self) -> tuple[str, ...]:
        """The values of this record's key fields, in order."""
        return tuple(str(getattr(self, field)) for field in self.KEY)


class InstanceKind(StrEnum):
    VM = "vm"
    CONTAINER = "container"


class InstanceState(StrEnum):
    """Last state virtkit recorded; drivers re-derive the live state from the process."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    ERROR = "error"


MAC_PATTERN = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"
IPV4_PATTERN = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$"


class Nic(BaseModel):
    """One network interface of an instance: its network, its fixed MAC and IPv4 address (dnsmasq
    hands out exactly these; the firewall lets nothing else out), and its host-side device (the tap
    of a VM, the host end of a container's veth)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    network: Name
    mac: str = Field(pattern=MAC_PATTERN)
    ip: str = Field(pattern=f"{IPV4_PATTERN}|^$")  # "": on a bridged network, the LAN gives it one
    device: str = Field(pattern=r"^vk[0-9a-f]{8}n[0-9]{1,2}$")
    inner: str = Field(default="eth0", pattern=r"^eth[0-9]{1,2}$")  # its name inside a container
    # a VM's NIC model; None: as its --devices
    model: str | None = Field(default=None, pattern=r"^(virtio|e1000)$")
    limit: int | None = Field(default=None, gt=0)  # bits per second, each direction
    allow_host: bool = False  # may reach the host's own services, not only DHCP/DNS on its gateway


class InstanceRecord(Record):
    TABLE: ClassVar[str] = "instances"
    KEY: ClassVar[tuple[str, ...]] = ("name",)

    name: Name
    uuid: str = Field(default_factory=lambda: str(uuid.uuid4()))
    kind: InstanceKind
    image: str | None = None
    arch: str = "x86_64"
    cpus: float = Field(default=1, gt=0, le=1024)
    memory: int = Field(default=256 * MiB, gt=0, le=MAX_SIZE)
    state: InstanceState = InstanceState.STOPPED
    config: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    started_at: float | None = None
    boot: dict[str, float] = Field(default_factory=dict)  # boot phases of the last start, in seconds
    nics: list[Nic] = Field(default_factory=list)
    volumes: list[VolumeAttachment] = Field(default_factory=list)  # in the order they were attached
    # Linked clones (docs/clones.md): the shared read-only layers under the instance's own top (its
    # root.qcow2, its upper/), nearest first; and what the last of them rests on: `image` (the
    # image's disk or tree), `own` (a VM disk without backing file, a container's own base/ tree)
    # or `layer` (a container whose last layer is a whole tree of its own).
    layers: list[LayerId] = Field(default_factory=list)
    base: str = Field(default="image", pattern=r"^(image|own|layer)$")


class ImageRecord(Record):
    TABLE: ClassVar[str] = "images"
    KEY: ClassVar[tuple[str, ...]] = ("fingerprint",)

    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str
    kinds: list[InstanceKind] = Field(default_factory=list)
    arch: str = "x86_64"
    format: str
    size: int = Field(default=0, ge=0)
    virtual_size: int = Field(default=0, ge=0)
    source: str = ""
    aliases: list[str] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
    container: dict[str, Any] = Field(default_factory=dict)
    properties: dict[str, str] = Field(default_factory=dict)


class Forward(BaseModel):
    """A published port: HOST_PORT/PROTO on every host address, DNAT to an instance's NIC on the network."""

    model_config = ConfigDict(extra="forbid")

    proto: str = Field(default="tcp", pattern=r"^(tcp|udp)$")
    host_port: int = Field(ge=1, le=65535)
    instance: Name
    port: int = Field(ge=1, le=65535)

    def label(self) -> str:
        return f"{self.host_port}/{self.proto}"


class NetworkRecord(Record):
    TABLE: ClassVar[str] = "networks"
    KEY: ClassVar[tuple[str, ...]] = ("name",)

    name: Name
    type: str = Field(default="nat", pattern=r"^(nat|isolated|bridged)$")
    bridge: str = ""
    # bridged: the host interface enslaved to the bridge (network/uplink.py); no subnet or gateway
    parent: str = ""
    subnet: str = ""
    gateway: str = ""
    domain: str = "virtkit"
    forwards: list[Forward] = Field(default_factory=list)
    config: dict[str, str] = Field(default_factory=dict)


class PoolRecord(Record):
    """A storage pool: a directory (driver `dir`) holding volumes, `block/` and `filesystem/`."""

    TABLE: ClassVar[str] = "pools"
    KEY: ClassVar[tuple[str, ...]] = ("name",)

    name: Name
    driver: str = Field(default="dir", pattern=r"^dir$")
    path: str = Field(pattern=r"^/")
    # virtkit made `path` itself, so deleting the pool may remove it; a directory the admin gave is kept
    owned: bool = False
    config: dict[str, str] = Field(default_factory=dict)


class VolumeType(StrEnum):
    """What a volume is to an instance: a virtual disk for VMs, a directory bind-mounted into containers."""

    BLOCK = "block"
    FILESYSTEM = "filesystem"


class VolumeRecord(Record):
    """A volume of a pool. `size` is the virtual disk size of a block volume, the (advisory) quota of a
    filesystem volume; `config` holds its IO limits (`limits.*`), applied when it is attached."""

    TABLE: ClassVar[str] = "volumes"
    KEY: ClassVar[tuple[str, ...]] = ("pool", "name")

    pool: Name
    name: Name
    size: int = Field(gt=0, le=MAX_SIZE)
    type: VolumeType = VolumeType.BLOCK
    format: str = Field(default="qcow2", pattern=r"^(qcow2|dir)$")
    attached_to: str | None = None
    config: dict[str, str] = Field(default_factory=dict)


# A file of an instance's directory, by its bare name: what a snapshot record names is joined to the
# instance's directory, so a damaged row can never point restore anywhere else.
SnapshotPart = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class VolumeAttachment(BaseModel):
    """A volume attached to an instance: everything its driver needs, so that it never reads the store.

    `source` is the volume's file (block: a qcow2 disk) or directory (filesystem) on the host, as
    its pool held it when attached. `device` is its slot in the instance (`vol0`, `vol1`, ...,
    first free): a VM's QEMU ids are made of it (node `vk-vol0`, device `vk-vol0`), a container's
    staging mount point is `volumes/vol0` in its directory. `path` is where a container sees it.
    `limits` are the volume's `limits.*` when it was attached (a VM's throttle group)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    pool: Name
    name: Name
    type: VolumeType
    format: str = Field(pattern=r"^(qcow2|dir)$")
    source: str = Field(pattern=r"^/")
    device: str = Field(pattern=r"^vol[0-9]{1,2}$")
    path: str | None = Field(default=None, pattern=r"^/")
    limits: dict[str, str] = Field(default_factory=dict)


InstanceRecord.model_rebuild()  # its `volumes` names VolumeAttachment, defined after it


class SnapshotRecord(Record):
    """A snapshot of an instance (see docs/snapshots.md). `disks` hold it as qcow2 internal snapshots
    named like it; `files` were copied into its directory (ROOT/instances/NAME/snapshots/SNAP/).
    `stateful`: a running VM's memory and device state too, in its first disk. `expires_at`:
    when `virtkit snapshot prune` deletes it (None: never); `scheduled`: made by the instance's
    `snapshots.schedule`."""

    TABLE: ClassVar[str] = "snapshots"
    KEY: ClassVar[tuple[str, ...]] = ("instance", "name")

    instance: Name
    name: Name
    stateful: bool = False
    expires_at: float | None = None
    config: dict[str, str] = Field(default_factory=dict)
    size: int = Field(default=0, ge=0)  # bytes of data it keeps (a VM: its disks' allocation then)
    disks: list[SnapshotPart] = Field(default_factory=list)
    files: list[SnapshotPart] = Field(default_factory=list)
    live: bool = False  # taken while the instance ran: consistent as after a power cut (unless stateful)
    scheduled: bool = False


class VolumeSnapshotRecord(Record):
    """A snapshot of a pool volume (see docs/storage.md): a qcow2 internal snapshot named like it in a
    block volume's disk, or a copy of a filesystem volume's directory beside it in its pool
    (POOL/filesystem/.VOLUME.snapshots/NAME/). Deleted with its volume. `size`: bytes it keeps (a
    block volume: what its disk had allocated then); `live`: taken while the instance holding the
    volume ran (a container, frozen for the copy: consistent as after a power cut)."""

    TABLE: ClassVar[str] = "volume_snapshots"
    KEY: ClassVar[tuple[str, ...]] = ("pool", "volume", "name")

    pool: Name
    volume: Name
    name: Name
    type: VolumeType
    size: int = Field(default=0, ge=0)
    live: bool = False


class OperationStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"


class OperationRecord(Record):
    """A long action (launch, copy, migrate, ...) with its progress, kept so it can be watched,
    waited for, and found again after a restart."""

    TABLE: ClassVar[str] = "operations"
    KEY: ClassVar[tuple[str, ...]] = ("id",)

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    action: str
    target: str = ""
    status: OperationStatus = OperationStatus.PENDING
    progress: float = Field(default=0.0, ge=0.0, le=100.0)
    message: str = ""
    error: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)


class Role(StrEnum):
    """What an API token may do: viewer reads; operator also acts on instances; admin does all."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = [Role.VIEWER, Role.OPERATOR, Role.ADMIN]
        return order.index(self) >= order.index(needed)


class TokenRecord(Record):
    """An API bearer token. Only the SHA-256 of the secret is kept: it cannot be shown again."""

    TABLE: ClassVar[str] = "tokens"
    KEY: ClassVar[tuple[str, ...]] = ("name",)

    name: Name
    role: Role = Role.VIEWER
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    expires_at: float | None = None
    last_used_at: float | None = None


class StackRecord(Record):
    """A stack `virtkit apply` made: the spec it last applied, and the networks and volumes it
    created (those, and the instances labelled with its name, are what `destroy` removes)."""

    TABLE: ClassVar[str] = "stacks"
    KEY: ClassVar[tuple[str, ...]] = ("name",)

    name: Name
    file: str = ""
    spec: dict[str, Any] = Field(default_factory=dict)
    networks: list[str] = Field(default_factory=list)
    volumes: list[str] = Field(default_factory=list)  # "POOL/NAME"
