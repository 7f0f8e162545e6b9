"""Reading an OVF descriptor (DMTF DSP0243, 1.x and 2.x; VMware and VirtualBox flavours) into a `Hardware`.

What is read: the References (file names and sizes), the DiskSection (each disk's file, capacity
and format), and the one VirtualSystem's VirtualHardwareSection: CPUs (ResourceType 3), memory
(4, in its AllocationUnits), disk controllers (5 IDE, 6 SCSI, 20 other: SATA/AHCI, NVMe), disks
(17, each on its controller at its address: that order is the boot order), CD drives (15, 16:
noted, not imported), NICs (10: model from ResourceSubType, network from Connection, MAC from
Address). Firmware: VMware's ``<vmw:Config vmw:key="firmware" vmw:value="efi"/>``, VirtualBox's
``<Firmware type="EFI"/>`` in its vbox:Machine section (which also gives the NICs' MACs).

Refused: what is not an OVF Envelope, a package of several virtual systems, compressed or chunked
file references, disks naming files outside the package or missing from its References, numbers
no VM has (appliance.check).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from virtkit.errors import RejectedError, SpecError
from virtkit.images.appliance import (
    DiskRef,
    Hardware,
    NicRef,
    attr,
    check,
    child_text,
    children,
    file_name,
    local,
    number,
    parse_xml,
)
from virtkit.images.detect import printable
from virtkit.units import GiB, KiB, MiB, TiB

CPU, MEMORY, IDE, SCSI, ETHERNET, CD, DVD, DISK, OTHER_STORAGE = 3, 4, 5, 6, 10, 15, 16, 17, 20
_NAMED_UNITS = {
    "byte": 1,
    "bytes": 1,
    "kilobytes": KiB,
    "kb": KiB,
    "megabytes": MiB,
    "mb": MiB,
    "gigabytes": GiB,
    "gb": GiB,
    "terabytes": TiB,
    "tb": TiB,
}
_FORMATS = (("vmdk", "vmdk"), ("vhdx", "vhdx"), ("vhd", "vpc"), ("vdi", "vdi"), ("qcow", "qcow2"))


@dataclass(frozen=True)
class _Item:
    kind: int
    values: dict[str, str]
    order: int

    def get(self, key: str) -> str | None:
        return self.values.get(key)


def parse(data: bytes, label: str, *, nested: bool = True) -> Hardware:
    """The hardware the OVF descriptor `data` describes; `nested` allows disk files in
    sub-directories (a bare OVF's), else only plain names (an OVA's members)."""
    root = parse_xml(data, label)
    if local(root.tag) != "Envelope":
        raise RejectedError(
            f"{label} is not an OVF descriptor (its root element is "
            f"{printable(local(root.tag), 40)}, not Envelope)"
        )
    files = _references(root, label, nested)
    disks = _disk_section(root, files, label)
    systems = [e for e in root.iter() if local(e.tag) == "VirtualSystem"]
    if len(systems) != 1:
        raise SpecError(
            f"{label} holds {len(systems)} virtual systems: virtkit imports one VM at a time",
            hint="export each VM on its own",
        )
    system = systems[0]
    hardware = next(iter(children(system, "VirtualHardwareSection")), None)
    if hardware is None:
        raise RejectedError(f"{label} has no VirtualHardwareSection: it describes no hardware")
    items = _items(hardware)
    family = " ".join(e.text or "" for e in hardware.iter() if local(e.tag) == "VirtualSystemType")
    ordered, notes = _disks(items, disks, label)
    return check(
        Hardware(
            source=_source(root, family),
            format="ovf",
            name=child_text(system, "Name") or attr(system, "id"),
            cpus=_cpus(items, label),
            memory=_memory(items, label),
            firmware=_firmware(root),
            disks=tuple(ordered),
            nics=_nics(root, items),
            os=_os(system),
            notes=tuple(notes),
        ),
        label,
    )


def _references(root: Element, label: str, nested: bool) -> dict[str, tuple[str, int | None]]:
    files: dict[str, tuple[str, int | None]] = {}
    for section in children(root, "References"):
        for element in children(section, "File"):
            ident, href = attr(element, "id") or "", attr(element, "href") or ""
            if attr(element, "compression") or attr(element, "chunkSize"):
                raise RejectedError(
                    f"{label}: file {printable(href)!r} is stored compressed or in chunks, "
                    "which virtkit does not read",
                    hint="export it uncompressed",
                )
            files[ident] = (
                file_name(href, label, nested=nested),
                number(attr(element, "size"), "file size", label),
            )
    return files


def _disk_section(root: Element, files: dict[str, tuple[str, int | None]], label: str) -> dict[str, DiskRef]:
    disks: dict[str, DiskRef] = {}
    for section in (e for e in root.iter() if local(e.tag) in ("DiskSection", "VirtualDiskDescSection")):
        for element in children(section, "Disk"):
            ident, ref = attr(element, "diskId") or "", attr(element, "fileRef")
            if ref is None:
                raise SpecError(
                    f"{label}: disk {printable(ident)!r} has no file (an empty disk to make); "
                    "virtkit imports disks with their data only"
                )
            if ref not in files:
                raise RejectedError(
                    f"{label}: disk {printable(ident)!r} names file {printable(ref)!r}, "
                    "which its References do not list"
                )
            href, size = files[ref]
            capacity = number(attr(element, "capacity"), "disk capacity", label)
            if capacity is not None:
                capacity *= _units(attr(element, "capacityAllocationUnits") or "byte", label)
            url = (attr(element, "format") or "").lower()
            fmt = next((name for key, name in _FORMATS if key in url), None)
            disks[ident] = DiskRef(file=href, capacity=capacity, format=fmt, size=size)
    return disks


def _items(hardware: Element) -> list[_Item]:
    items = []
    for order, element in enumerate(
        e for e in hardware if local(e.tag) in ("Item", "StorageItem", "EthernetPortItem")
    ):
        values = {local(child.tag): (child.text or "").strip() for child in element}
        kind = values.get("ResourceType", "")
        items.append(_Item(int(kind) if kind.isdigit() and len(kind) < 6 else -1, values, order))
    return items


def _units(text: str, label: str) -> int:
    """Bytes per unit of an AllocationUnits value: "byte * 2^20", "MegaBytes", "byte * 1024"."""
    key = text.strip().lower().replace(" ", "")
    if key in _NAMED_UNITS:
        return _NAMED_UNITS[key]
    power = re.fullmatch(r"bytes?\*(\d{1,4})\^(\d{1,2})", key)
    if power and int(power[1]) in (2, 10, 1024) and int(power[1]) ** int(power[2]) <= 2**60:
        unit: int = int(power[1]) ** int(power[2])
        return unit
    times = re.fullmatch(r"bytes?\*(\d{1,13})", key)
    if times:
        return int(times[1])
    raise SpecError(
        f"{label}: unknown allocation unit {printable(text, 40)!r}",
        hint='OVF gives sizes in units such as "byte * 2^20"',
    )


def _cpus(items: list[_Item], label: str) -> int | None:
    found = next((item for item in items if item.kind == CPU), None)
    return number(found.get("VirtualQuantity"), "CPU count", label) if found else None


def _memory(items: list[_Item], label: str) -> int | None:
    found = next((item for item in items if item.kind == MEMORY), None)
    quantity = number(found.get("VirtualQuantity"), "memory size", label) if found else None
    if found is None or quantity is None:
        return None
    return quantity * _units(found.get("AllocationUnits") or "byte * 2^20", label)


def _bus(item: _Item) -> tuple[str, str]:
    subtype = item.get("ResourceSubType") or ""
    lower = subtype.lower()
    if item.kind == IDE:
        return "ide", subtype or "IDE"
    if "virtio" in lower:
        return "virtio", subtype
    if item.kind == SCSI:
        return "scsi", subtype or "SCSI"
    if "nvme" in lower:
        return "nvme", subtype
    if "ahci" in lower or "sata" in lower:
        return "sata", subtype
    return "unknown", subtype


def _disks(items: list[_Item], disks: dict[str, DiskRef], label: str) -> tuple[list[DiskRef], list[str]]:
    """The disks in boot order: by controller (in the order the descriptor lists them), then address."""
    controllers = {
        item.get("InstanceID"): (item.order, *_bus(item))
        for item in items
        if item.kind in (IDE, SCSI, OTHER_STORAGE)
    }
    placed: list[tuple[tuple[int, int, int], DiskRef]] = []
    notes: list[str] = []
    for item in items:
        if item.kind in (CD, DVD):
            notes.append(f"CD/DVD drive {item.get('ElementName') or item.get('InstanceID')}: not imported")
            continue
        if item.kind != DISK:
            continue
        resource = item.get("HostResource") or ""
        ident = re.sub(r"^(ovf:)?/?disk/", "", resource)
        if ident not in disks:
            raise RejectedError(
                f"{label}: a disk drive refers to {printable(resource)!r}, which its "
                "DiskSection does not describe"
            )
        order, bus, model = controllers.get(item.get("Parent"), (len(items), "unknown", ""))
        address = item.get("AddressOnParent") or ""
        place = (order, int(address) if address.isdigit() and len(address) < 4 else 999, item.order)
        placed.append((place, _replace(disks.pop(ident), bus, model)))
    for ident in disks:
        notes.append(f"disk {ident} is on no controller: not imported")
    return [disk for _place, disk in sorted(placed, key=lambda pair: pair[0])], notes


def _replace(disk: DiskRef, bus: str, controller: str) -> DiskRef:
    return DiskRef(
        file=disk.file,
        bus=bus,
        controller=controller,
        capacity=disk.capacity,
        format=disk.format,
        size=disk.size,
    )


def _nics(root: Element, items: list[_Item]) -> tuple[NicRef, ...]:
    macs = [
        _mac(attr(e, "MACAddress") or "")
        for e in root.iter()
        if local(e.tag) == "Adapter" and (attr(e, "enabled") or "true").lower() == "true"
    ]
    nics = []
    for index, item in enumerate(i for i in items if i.kind == ETHERNET):
        model = item.get("ResourceSubType") or item.get("ElementName") or "unknown"
        mac = _mac(item.get("Address") or "") or (macs[index] if index < len(macs) else None)
        nics.append(
            NicRef(model=printable(model, 40), mac=mac, network=printable(item.get("Connection") or "", 60))
        )
    return tuple(nics)


def _mac(text: str) -> str | None:
    """A MAC as VMware (00:50:56:..) or VirtualBox (080027A1B2C3) writes it, or None."""
    digits = re.sub(r"[:\-]", "", text.strip().lower())
    if not re.fullmatch(r"[0-9a-f]{12}", digits):
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _firmware(root: Element) -> str | None:
    for element in root.iter():
        name = local(element.tag)
        if name == "Config" and (attr(element, "key") or "").lower() == "firmware":
            return "uefi" if (attr(element, "value") or "").lower() == "efi" else "bios"
        if name == "Firmware" and attr(element, "type"):
            return "uefi" if (attr(element, "type") or "").upper().startswith("EFI") else "bios"
    return None


def _source(root: Element, family: str) -> str:
    namespaces = " ".join(f"{e.tag} {' '.join(e.attrib)}" for e in root.iter())
    if "vmx-" in family or "vmware.com" in namespaces:
        return "VMware"
    if "virtualbox" in family.lower() or "virtualbox.org" in namespaces:
        return "VirtualBox"
    return "unknown (OVF)"


def _os(system: Element) -> str:
    for section in children(system, "OperatingSystemSection"):
        described = child_text(section, "Description") or attr(section, "osType") or ""
        return printable(described, 60)
    return ""
