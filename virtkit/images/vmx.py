"""Reading VMware's .vmx (``key = "value"`` lines) and VirtualBox's .vbox (XML) into a `Hardware`.

From a .vmx: numvcpus, memsize (MiB), firmware ("efi" or "bios"), guestOS, displayName; disks
``BUSn:u.fileName`` on ide, scsi (scsiN.virtualDev: lsilogic, pvscsi, ...), sata and nvme
controllers whose ``.present`` is not FALSE, CD-ROMs (deviceType cdrom-*, noted, not imported);
their order is ``bios.hddOrder``'s first disk, then ide, sata, scsi, nvme by controller and unit;
NICs ethernetN (virtualDev, default vlance; address or generatedAddress; networkName).
Keys are case-insensitive, as VMware reads them.

From a .vbox: Machine name, Hardware/CPU count, Memory RAMSize (MiB), Firmware type, the
StorageControllers' attached hard disks (their images found in the MediaRegistry by UUID),
enabled Network Adapters (type, MACAddress).
"""

from __future__ import annotations

import re

from virtkit.errors import RejectedError, SpecError
from virtkit.images.appliance import (
    MAX_DESCRIPTOR,
    DiskRef,
    Hardware,
    NicRef,
    attr,
    check,
    file_name,
    local,
    number,
    parse_xml,
)
from virtkit.images.detect import printable
from virtkit.units import MiB

_LINE = re.compile(r'^\s*([A-Za-z0-9_.:\-]+)\s*=\s*"(.*)"\s*$')
_DISK = re.compile(r"^(ide|scsi|sata|nvme)(\d{1,2}):(\d{1,3})\.filename$")
_BUS_ORDER = {"ide": 0, "sata": 1, "scsi": 2, "nvme": 3}
_CD_TYPES = ("cdrom-image", "cdrom-raw", "atapi-cdrom")
_VBOX_BUSES = {
    "IDE": "ide",
    "SATA": "sata",
    "SCSI": "scsi",
    "SAS": "scsi",
    "PCIe": "nvme",
    "VirtioSCSI": "virtio",
    "Floppy": "floppy",
    "USB": "usb",
}


def parse_vmx(data: bytes, label: str) -> Hardware:
    """The hardware a .vmx file describes."""
    if len(data) > MAX_DESCRIPTOR:
        raise RejectedError(f"{label} is larger than a .vmx file may be")
    values: dict[str, str] = {}
    for number_, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise RejectedError(f'{label}: line {number_} is not key = "value": {printable(line, 80)!r}')
        values[match[1].lower()] = match[2]
    if not values:
        raise RejectedError(f"{label} holds no settings: it is not a .vmx file")
    memsize = number(values.get("memsize"), "memsize", label)
    firmware = values.get("firmware", "").lower()
    disks, notes = _vmx_disks(values, label)
    return check(
        Hardware(
            source="VMware",
            format="vmx",
            name=values.get("displayname"),
            cpus=number(values.get("numvcpus"), "numvcpus", label) or 1,
            memory=memsize * MiB if memsize is not None else None,
            firmware="uefi" if firmware == "efi" else "bios",
            disks=tuple(disks),
            nics=_vmx_nics(values),
            os=printable(values.get("guestos", ""), 60),
            notes=tuple(notes),
        ),
        label,
    )


def _present(values: dict[str, str], key: str) -> bool:
    return values.get(f"{key}.present", "true").strip().lower() not in ("false", "0", "no")


def _vmx_disks(values: dict[str, str], label: str) -> tuple[list[DiskRef], list[str]]:
    found: list[tuple[tuple[int, int, int, int], DiskRef]] = []
    notes: list[str] = []
    first = values.get("bios.hddorder", "").split(",")[0].strip().lower()
    for key, value in values.items():
        match = _DISK.match(key)
        if match is None:
            continue
        bus, controller, unit = match[1], int(match[2]), int(match[3])
        slot = f"{bus}{controller}:{unit}"
        if not _present(values, slot) or not _present(values, f"{bus}{controller}"):
            continue
        device = values.get(f"{slot}.devicetype", "disk").lower()
        if device in _CD_TYPES or "cdrom" in device:
            notes.append(f"CD-ROM {slot} ({printable(value, 60)}): not imported")
            continue
        model = values.get(f"{bus}{controller}.virtualdev", "") if bus == "scsi" else ""
        if len(found) >= 64:
            raise SpecError(f"{label} describes more than 64 disks")
        disk = DiskRef(file=file_name(value, label), bus=bus, controller=printable(model or bus.upper(), 40))
        found.append(((0 if slot == first else 1, _BUS_ORDER[bus], controller, unit), disk))
    return [disk for _key, disk in sorted(found, key=lambda pair: pair[0])], notes


def _vmx_nics(values: dict[str, str]) -> tuple[NicRef, ...]:
    indexes = sorted({int(m[1]) for key in values if (m := re.match(r"^ethernet(\d{1,2})\.", key))})
    nics = []
    for index in indexes:
        prefix = f"ethernet{index}"
        if not _present(values, prefix):
            continue
        mac = values.get(f"{prefix}.address") or values.get(f"{prefix}.generatedaddress") or None
        nics.append(
            NicRef(
                model=printable(values.get(f"{prefix}.virtualdev", "vlance"), 40),
                mac=_mac(mac),
                network=printable(
                    values.get(f"{prefix}.networkname", values.get(f"{prefix}.connectiontype", "")), 60
                ),
            )
        )
    return tuple(nics)


def _mac(text: str | None) -> str | None:
    if text is None:
        return None
    digits = re.sub(r"[:\-]", "", text.strip().lower())
    return (
        ":".join(digits[i : i + 2] for i in range(0, 12, 2))
        if re.fullmatch(r"[0-9a-f]{12}", digits)
        else None
    )


def parse_vbox(data: bytes, label: str) -> Hardware:
    """The hardware a VirtualBox .vbox file describes."""
    root = parse_xml(data, label)
    machine = next((e for e in root.iter() if local(e.tag) == "Machine"), None)
    if local(root.tag) != "VirtualBox" or machine is None:
        raise RejectedError(f"{label} is not a VirtualBox machine file (no VirtualBox/Machine element)")
    media = {attr(e, "uuid"): attr(e, "location") or "" for e in root.iter() if local(e.tag) == "HardDisk"}
    found = {local(e.tag): e for e in machine.iter() if local(e.tag) in ("CPU", "Memory", "Firmware")}
    memory = number(attr(found["Memory"], "RAMSize"), "RAMSize", label) if "Memory" in found else None
    firmware = attr(found["Firmware"], "type") if "Firmware" in found else None
    disks: list[tuple[tuple[int, int, int], DiskRef]] = []
    controllers = [e for e in machine.iter() if local(e.tag) == "StorageController"]
    for order, controller in enumerate(controllers):
        bus = _VBOX_BUSES.get(attr(controller, "type") or "", "unknown")
        if bus == "unknown":
            bus = {
                "PIIX3": "ide",
                "PIIX4": "ide",
                "ICH6": "ide",
                "AHCI": "sata",
                "LsiLogic": "scsi",
                "BusLogic": "scsi",
                "NVMe": "nvme",
            }.get(attr(controller, "type") or "", "unknown")
        for device in (e for e in controller if local(e.tag) == "AttachedDevice"):
            if attr(device, "type") != "HardDisk":
                continue
            image = next((e for e in device if local(e.tag) == "Image"), None)
            uuid = attr(image, "uuid") if image is not None else None
            if uuid not in media:
                raise RejectedError(
                    f"{label}: a disk's image {printable(uuid or '')!r} is not in its MediaRegistry"
                )
            port = number(attr(device, "port"), "port", label) or 0
            slot = number(attr(device, "device"), "device", label) or 0
            disks.append(
                (
                    (order, port, slot),
                    DiskRef(
                        file=file_name(media[uuid], label),
                        bus=bus,
                        controller=printable(attr(controller, "type") or "", 40),
                    ),
                )
            )
    nics = tuple(
        NicRef(model=printable(attr(e, "type") or "Am79C973", 40), mac=_mac(attr(e, "MACAddress")))
        for e in machine.iter()
        if local(e.tag) == "Adapter" and (attr(e, "enabled") or "false").lower() == "true"
    )
    return check(
        Hardware(
            source="VirtualBox",
            format="vbox",
            name=attr(machine, "name"),
            cpus=number(attr(found["CPU"], "count"), "CPU count", label) or 1 if "CPU" in found else None,
            memory=memory * MiB if memory is not None else None,
            firmware="uefi" if (firmware or "").upper().startswith("EFI") else "bios",
            disks=tuple(d for _k, d in sorted(disks, key=lambda pair: pair[0])),
            nics=nics,
            os=printable(attr(machine, "OSType") or "", 60),
        ),
        label,
    )
