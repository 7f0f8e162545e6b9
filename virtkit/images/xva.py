"""Reading a XenServer/XCP-ng export (XVA) descriptor, `ova.xml`, into a `Hardware`.

An XVA is a tar whose first member, ova.xml, is an XML-RPC value: a struct whose `objects` array
holds the exported database rows, each a struct of `class`, `id` ("Ref:12") and `snapshot` (the
row's fields). Read from them: the VM (the one that is not a snapshot or template): name_label,
VCPUs_max, memory_static_max (bytes), HVM_boot_policy and HVM_boot_params' `firmware` (bios or
uefi; no HVM boot policy: a PV guest), its VBDs of type Disk in userdevice order, each with its
VDI's virtual_size (the VDI's id names the tar directory of its chunks, xvadisk.py); its VIFs
(device, MAC, the network's name_label). XenServer guests use Xen's PV drivers, not virtio.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from virtkit.errors import RejectedError, SpecError
from virtkit.images.appliance import MAX_DISKS, DiskRef, Hardware, NicRef, check, local, number, parse_xml
from virtkit.images.detect import printable

MAX_DEPTH = 24
MAX_OBJECTS = 100_000
Row = dict[str, Any]


def decode(element: Element, label: str, depth: int = 0) -> Any:
    """The Python value of an XML-RPC <value>: str, bool, int, list or dict (bounded nesting)."""
    if depth > MAX_DEPTH:
        raise RejectedError(f"{label}: its ova.xml nests values deeper than {MAX_DEPTH} levels")
    inner = next(iter(element), None)
    if inner is None:
        return (element.text or "").strip()
    kind = local(inner.tag)
    if kind == "struct":
        members: Row = {}
        for member in inner:
            name = next((c.text or "" for c in member if local(c.tag) == "name"), "")
            value = next((c for c in member if local(c.tag) == "value"), None)
            members[name] = decode(value, label, depth + 1) if value is not None else ""
        return members
    if kind == "array":
        data = next(iter(inner), None)
        values = list(data) if data is not None else []
        if len(values) > MAX_OBJECTS:
            raise RejectedError(f"{label}: its ova.xml has an array of more than {MAX_OBJECTS} values")
        return [decode(value, label, depth + 1) for value in values]
    if kind == "boolean":
        return (inner.text or "").strip() == "1"
    return (inner.text or "").strip()


def rows(data: bytes, label: str) -> dict[str, tuple[str, Row]]:
    """ova.xml's objects by id: (class, fields)."""
    root = parse_xml(data, label)
    if local(root.tag) != "value":
        raise RejectedError(f"{label} is not a XenServer export: ova.xml holds no XML-RPC value")
    top = decode(root, label)
    objects = top.get("objects") if isinstance(top, dict) else None
    if not isinstance(objects, list):
        raise RejectedError(f"{label} is not a XenServer export: ova.xml has no objects")
    found: dict[str, tuple[str, Row]] = {}
    for entry in objects:
        if isinstance(entry, dict) and isinstance(entry.get("snapshot"), dict):
            found[str(entry.get("id", ""))] = (str(entry.get("class", "")), entry["snapshot"])
    return found


def parse(data: bytes, label: str) -> Hardware:
    """The hardware the XVA's ova.xml describes."""
    objects = rows(data, label)
    vms = [
        (ref, row)
        for ref, (cls, row) in objects.items()
        if cls == "VM" and not _true(row, "is_a_snapshot") and not _true(row, "is_control_domain")
    ]
    if len(vms) != 1:
        raise SpecError(f"{label} holds {len(vms)} virtual machines: virtkit imports one at a time")
    _ref, vm = vms[0]
    disks, notes = _disks(vm, objects, label)
    policy = str(vm.get("HVM_boot_policy", ""))
    given = vm.get("HVM_boot_params")
    params: Row = given if isinstance(given, dict) else {}
    firmware = "uefi" if str(params.get("firmware", "")).lower() == "uefi" else "bios"
    if not policy and str(vm.get("domain_type", "")) != "hvm":
        notes.append(
            "a PV guest (booted by pygrub on Xen): here firmware (BIOS) boots its disk's own "
            "bootloader, which it must have"
        )
    cpus = vm.get("VCPUs_max") or vm.get("VCPUs_at_startup")
    return check(
        Hardware(
            source="XenServer",
            format="xva",
            name=str(vm.get("name_label", "")) or None,
            cpus=number(str(cpus), "VCPUs_max", label) if cpus else None,
            memory=number(str(vm.get("memory_static_max", "")), "memory_static_max", label),
            firmware=firmware,
            disks=tuple(disks),
            nics=_nics(vm, objects),
            os=printable(str(_other(vm).get("os-version", "") or ""), 60),
            notes=tuple(notes),
        ),
        label,
    )


def _true(row: Row, key: str) -> bool:
    return row.get(key) is True or str(row.get(key, "")).lower() == "true"


def _other(row: Row) -> Row:
    value = row.get("other_config")
    return value if isinstance(value, dict) else {}


def _refs(row: Row, key: str, label: str) -> list[str]:
    value = row.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_DISKS * 4:
        raise SpecError(f"{label}: the VM's {key} are not a list of at most {MAX_DISKS * 4}")
    return [str(item) for item in value]


def _disks(vm: Row, objects: dict[str, tuple[str, Row]], label: str) -> tuple[list[DiskRef], list[str]]:
    placed: list[tuple[int, DiskRef]] = []
    notes: list[str] = []
    for ref in _refs(vm, "VBDs", label):
        cls, vbd = objects.get(ref, ("", {}))
        if cls != "VBD":
            raise RejectedError(f"{label}: the VM's VBD {printable(ref)!r} is not in ova.xml")
        device = str(vbd.get("userdevice", ""))
        if str(vbd.get("type", "Disk")).lower() != "disk":
            notes.append(f"CD drive {printable(device)}: not imported")
            continue
        vdi_ref = str(vbd.get("VDI", ""))
        cls, vdi = objects.get(vdi_ref, ("", {}))
        if cls != "VDI":
            raise RejectedError(
                f"{label}: disk {printable(device)}'s VDI {printable(vdi_ref)!r} is not in ova.xml"
            )
        size = number(str(vdi.get("virtual_size", "")), "virtual_size", label)
        if size is None:
            raise RejectedError(f"{label}: VDI {printable(vdi_ref)!r} has no virtual_size")
        order = int(device) if device.isdigit() and len(device) < 4 else 999
        placed.append(
            (order, DiskRef(file=vdi_ref, bus="xen", controller="xen-blkfront", capacity=size, format="raw"))
        )
    return [disk for _order, disk in sorted(placed, key=lambda pair: pair[0])], notes


def _nics(vm: Row, objects: dict[str, tuple[str, Row]]) -> tuple[NicRef, ...]:
    nics: list[tuple[int, NicRef]] = []
    for ref in _refs(vm, "VIFs", "ova.xml"):
        cls, vif = objects.get(ref, ("", {}))
        if cls != "VIF":
            continue
        network = objects.get(str(vif.get("network", "")), ("", {}))[1]
        device = str(vif.get("device", ""))
        mac = str(vif.get("MAC", "")).lower()
        nics.append(
            (
                int(device) if device.isdigit() and len(device) < 4 else 999,
                NicRef(
                    model="xen-netfront",
                    mac=mac if len(mac) == 17 else None,
                    network=printable(str(network.get("name_label", "")), 60),
                ),
            )
        )
    return tuple(nic for _order, nic in sorted(nics, key=lambda pair: pair[0]))
