"""`virtkit import-vm`: a virtkit VM made from another hypervisor's appliance (V2V import).

`plan` reads the appliance's descriptor (images/foreign.py) and maps its hardware onto a virtkit
VM, checking everything that can be checked before a byte of disk data is read: the names are
free, the CPUs and memory fit this host, the networks exist. The mapping:

- CPUs, memory, firmware (bios/uefi) as described (options override; a bare disk gets defaults);
- devices: virtio only when every disk and NIC of the source was virtio already; else emulated
  (AHCI disks, e1000 NICs): the guest may have no virtio drivers; a Linux guest is then
  converted (`virtkit convert`: virtio drivers in its initramfs, then virtio devices) unless
  --no-convert or --devices was given; a guest that cannot be converted keeps emulated devices;
- the first disk in boot order becomes an image (alias NAME) under the VM's root disk; every other
  disk a block volume NAME-diskN in the pool, attached in order;
- NIC i goes on the i-th `--network` given (not connected without one), keeping its MAC when no
  other instance has it.

`run` then does it (ops/v2vimport.py), each step undone should a later one fail: the disks made
local, each converted by the image importer (images/disk.py), the instance created through
Lifecycle, the volumes attached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtkit.errors import ConflictError, SpecError
from virtkit.images.appliance import DiskRef, Hardware, NicRef
from virtkit.images.foreign import Source
from virtkit.images.staged import Progress, no_progress
from virtkit.model import InstanceKind, InstanceRecord, VolumeRecord, validate_name
from virtkit.store import Store
from virtkit.units import GiB

if TYPE_CHECKING:
    from virtkit.ops.v2vimport import Imported

DEFAULT_MEMORY = 1 * GiB  # a bare disk's: what an OS installed on it likely needs
DEFAULT_POOL = "default"


@dataclass(frozen=True)
class Options:
    """What the user said on the command line (None: take it from the source)."""

    name: str | None = None
    cpus: int | None = None
    memory: int | None = None
    firmware: str | None = None
    devices: str | None = None
    networks: tuple[str, ...] = ()
    pool: str = DEFAULT_POOL
    convert: bool = True  # a guest given emulated devices is converted (ops/convert.py)


@dataclass(frozen=True)
class DiskPlan:
    ref: DiskRef
    target: str  # "root" or "volume"
    volume: str | None  # the volume's name for target "volume"
    bus: str  # the bus the VM has it on: virtio or ahci


@dataclass(frozen=True)
class NicPlan:
    ref: NicRef
    model: str  # virtio or e1000
    network: str | None  # None: not connected
    mac: str | None  # kept from the source, or None for a new one


@dataclass(frozen=True)
class Plan:
    source: Source
    name: str
    cpus: int
    memory: int
    firmware: str
    devices: str
    pool: str
    disks: tuple[DiskPlan, ...]
    nics: tuple[NicPlan, ...]
    notes: tuple[str, ...] = ()
    convert: bool = False  # run `virtkit convert` once made: emulated devices not asked for

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.source.path.absolute()),
            "format": self.source.kind,
            "found": self.source.hardware.to_dict(),
            "name": self.name,
            "cpus": self.cpus,
            "memory": self.memory,
            "firmware": self.firmware,
            "devices": self.devices,
            "convert": self.convert,
            "machine": "q35",
            "pool": self.pool,
            "disks": [
                {
                    "source": d.ref.file,
                    "source_bus": d.ref.bus,
                    "target": d.target,
                    "volume": d.volume,
                    "bus": d.bus,
                }
                for d in self.disks
            ],
            "nics": [
                {
                    "source_model": n.ref.model,
                    "source_network": n.ref.network,
                    "model": n.model,
                    "network": n.network,
                    "mac": n.mac,
                }
                for n in self.nics
            ],
            "notes": list(self.notes),
        }


def vm_name(text: str | None, path: Path) -> str:
    """A DNS-label instance name from the source's VM name (or its file name)."""
    base = text or path.name.split(".")[0]
    name = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")[:63].rstrip("-")
    if not name or not name[0].isalpha():
        name = f"vm-{name}"[:63].rstrip("-")
    return name


def plan(root: Path, store: Store, path: Path, options: Options) -> Plan:
    """What importing `path` would make; SpecError/ConflictError/RejectedError when it cannot."""
    from virtkit.images import foreign
    from virtkit.ops.resources import check_resources

    source = foreign.read(path)
    hardware = source.hardware
    if not hardware.disks:
        raise SpecError(f"{path.name} describes a VM without disks: there is nothing to import")
    foreign.check_present(source)
    _check_sizes(hardware, path)
    name = validate_name(options.name) if options.name else vm_name(hardware.name, path)
    cpus = options.cpus or hardware.cpus or 1
    memory = options.memory or hardware.memory or DEFAULT_MEMORY
    check_resources(InstanceKind.VM.value, cpus, memory)
    notes = list(hardware.notes)
    devices, why = _devices(hardware, options.devices)
    notes.append(why)
    firmware = options.firmware or hardware.firmware or "bios"
    bus = "virtio" if devices == "virtio" else "ahci"
    disks = tuple(
        DiskPlan(disk, "root" if i == 0 else "volume", None if i == 0 else f"{name}-disk{i + 1}", bus)
        for i, disk in enumerate(hardware.disks)
    )
    nics, nic_notes = _nics(root, store, hardware, options.networks, devices)
    convert = options.convert and options.devices is None and devices == "emulated"
    result = Plan(
        source, name, cpus, memory, firmware, devices, options.pool, disks, nics, tuple(notes + nic_notes),
        convert=convert,
    )
    _check_free(root, store, result)
    return result


def _check_sizes(hardware: Hardware, path: Path) -> None:
    from virtkit.images.disk import DEFAULT_MAX_VIRTUAL_SIZE
    from virtkit.units import format_size

    for disk in hardware.disks:
        if disk.capacity is not None and disk.capacity > DEFAULT_MAX_VIRTUAL_SIZE:
            raise SpecError(
                f"{path.name}: disk {disk.file} is {format_size(disk.capacity)}, more than the "
                f"{format_size(DEFAULT_MAX_VIRTUAL_SIZE)} virtkit imports"
            )


def _devices(hardware: Hardware, asked: str | None) -> tuple[str, str]:
    if asked is not None:
        return asked, f"devices {asked}, as asked"
    virtio = all(d.bus == "virtio" for d in hardware.disks) and all(
        "virtio" in n.model.lower() for n in hardware.nics
    )
    if virtio:
        return "virtio", "devices virtio: the source's disks and NICs were virtio already"
    return "emulated", (
        "devices emulated (AHCI disks, e1000 NICs): the source's were not virtio, and "
        "its guest may have no virtio drivers"
    )


def _nics(
    root: Path, store: Store, hardware: Hardware, networks: tuple[str, ...], devices: str
) -> tuple[tuple[NicPlan, ...], list[str]]:
    from virtkit.network.addressing import parse_mac
    from virtkit.ops.networks import Networks

    if len(networks) > max(len(hardware.nics), 1):
        raise SpecError(
            f"{len(networks)} --network options for {len(hardware.nics)} NIC(s) in the source",
            hint="give one --network per NIC, in the source's order",
        )
    known = Networks(root, store)
    used = {a.nic.mac for a in known.attachments()}
    refs = hardware.nics or ((NicRef(model="none"),) if networks else ())
    plans, notes = [], []
    for index, ref in enumerate(refs):
        network = networks[index] if index < len(networks) else None
        if network is not None:
            known.planned(network)  # NotFoundError when it does not exist (`default` is made)
        mac = None
        if ref.mac:
            try:
                mac = parse_mac(ref.mac)
            except SpecError:
                notes.append(f"NIC {index + 1}: its MAC {ref.mac} cannot be kept (not a unicast address)")
        if mac in used:
            notes.append(f"NIC {index + 1}: its MAC {mac} is another instance's: it gets a new one")
            mac = None
        model = "virtio" if devices == "virtio" else "e1000"
        plans.append(NicPlan(ref, model, network, mac))
    if any(p.network is None for p in plans):
        notes.append("NICs without --network NAME are not connected: give one --network per NIC")
    return tuple(plans), notes


def _check_free(root: Path, store: Store, plan: Plan) -> None:
    from virtkit.ops.images import image_store

    if store.find(InstanceRecord, plan.name) is not None:
        raise ConflictError(f"instance {plan.name!r} already exists", hint="choose another with --name")
    holder = next((r for r in image_store(root, store).list() if plan.name in r.aliases), None)
    if holder is not None:
        raise ConflictError(
            f"image alias {plan.name!r} already names image {holder.fingerprint[:12]}",
            hint="choose another name with --name, or delete that image first",
        )
    for disk in plan.disks:
        if disk.volume and store.find(VolumeRecord, plan.pool, disk.volume) is not None:
            raise ConflictError(
                f"volume {disk.volume!r} already exists in pool {plan.pool!r}",
                hint="choose another name with --name",
            )


def run(root: Path, store: Store, plan: Plan, progress: Progress = no_progress) -> Imported:
    """Import as `plan` says; a failure undoes every step (no instance, image, volume or file left)."""
    from virtkit.ops.v2vimport import run as run_plan

    return run_plan(root, store, plan, progress)
