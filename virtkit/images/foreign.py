"""A foreign appliance as one value: its descriptor read (`read`), then its disks made local (`disks`).

`read(path)` tells the format (appliance.kind_of), reads the descriptor only (an OVA's or XVA's
first member; an OVF, .vmx or .vbox file; for a bare disk image, the image's own header through
images/detect.py) and returns a `Source`: the hardware described, and the descriptor's bytes, so
the later pass over the archive can check it reads the same one. `disks(source, work)` then gives
each disk of the VM as a local file to hand to images/disk.py's importer, with the format to
read it as: an OVA's extracted from it and checked against its manifest, an XVA's put together
from its checksummed chunks (both into `work`, which the caller removes), a bare OVF's, .vmx's or
.vbox's found beside it (inside its directory, never through a link out of it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import RejectedError, SpecError
from virtkit.images.appliance import MAX_DESCRIPTOR, DiskRef, Hardware, file_name, inside, kind_of
from virtkit.images.detect import NAMES, detect, printable

READS = (
    "import-vm reads OVA, OVF, VMX, VBOX and XVA files, and VMDK, VDI, VHD, VHDX, qcow2 or raw (.img) disks"
)
SOURCES = {
    "vmdk": "VMware",
    "vdi": "VirtualBox",
    "vpc": "Hyper-V or Xen (VHD)",
    "vhdx": "Hyper-V",
    "qcow2": "QEMU",
    "raw": "unknown (raw disk)",
}


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # appliance.KINDS
    hardware: Hardware
    descriptor: bytes = b""
    descriptor_name: str = ""


@dataclass(frozen=True)
class LocalDisk:
    """A disk ready for the importer: its file, and its format when the source says it for sure."""

    ref: DiskRef
    path: Path
    format: str | None
    notes: tuple[str, ...] = ()


def read(path: Path) -> Source:
    """The appliance at `path`, its descriptor read and checked (no disk data read yet)."""
    kind = kind_of(path)
    label = path.name
    if kind == "ova":
        from virtkit.images import ova, ovf

        name, data = ova.descriptor(path)
        hardware = dataclasses.replace(
            ovf.parse(data, f"{label} ({printable(name)})", nested=False), format="ova"
        )
        return Source(path, kind, hardware, data, name)
    if kind == "xva":
        from virtkit.images import xva
        from virtkit.images.package import first_member

        name, data = first_member(path, label, MAX_DESCRIPTOR)
        if name != "ova.xml":
            raise RejectedError(
                f"{label} is not an XVA: its first member is {printable(name)!r}, not ova.xml"
            )
        return Source(path, kind, xva.parse(data, label), data, name)
    if kind == "disk":
        return Source(path, kind, _bare_disk(path))
    data = _small_file(path)
    if kind == "ovf":
        from virtkit.images import ovf

        return Source(path, kind, ovf.parse(data, label), data, label)
    from virtkit.images import vmx

    hardware = vmx.parse_vmx(data, label) if kind == "vmx" else vmx.parse_vbox(data, label)
    return Source(path, kind, hardware, data, label)


def _small_file(path: Path) -> bytes:
    with path.open("rb") as file:
        data = file.read(MAX_DESCRIPTOR + 1)
    if len(data) > MAX_DESCRIPTOR:
        raise RejectedError(f"{path.name} is larger than a descriptor may be ({MAX_DESCRIPTOR} bytes)")
    return data


def _bare_disk(path: Path) -> Hardware:
    try:
        detected = detect(path)
    except RejectedError as exc:
        raise RejectedError(exc.message, hint=READS) from None
    if detected.kind != "disk":
        raise SpecError(
            f"{path.name} is {NAMES[detected.format]} data, not an appliance or a disk image",
            hint=READS,
        )
    notes = (
        "a bare disk says nothing of its hardware: CPUs, memory and firmware are defaults "
        "or what the options say",
    )
    return Hardware(
        source=SOURCES.get(detected.format, "unknown"),
        format="disk",
        name=path.name.split(".")[0] or None,
        disks=(DiskRef(file=path.name, format=detected.format),),
        notes=notes,
    )


def disks(source: Source, work: Path) -> list[LocalDisk]:
    """Each disk of the VM as a local file, in boot order (see the module's doc)."""
    hardware = source.hardware
    if source.kind == "disk":
        return [LocalDisk(hardware.disks[0], source.path, hardware.disks[0].format)]
    if source.kind == "ova":
        from virtkit.images import ova

        files, extracted = ova.extract(source.path, work, hardware, source.descriptor)
        return [
            LocalDisk(disk, files[disk.file], disk.format, tuple(extracted) if i == 0 else ())
            for i, disk in enumerate(hardware.disks)
        ]
    if source.kind == "xva":
        from virtkit.images import xvadisk

        parts = xvadisk.extract(source.path, work, hardware, source.descriptor)
        return [LocalDisk(disk, parts[disk.file], "raw") for disk in hardware.disks]
    directory = source.path.parent
    found = {
        disk.file: inside(directory, file_name(disk.file, source.path.name), source.path.name)
        for disk in hardware.disks
    }
    notes: tuple[str, ...] = ()
    if source.kind == "ovf":
        from virtkit.images import ova

        notes = tuple(ova.verify_files(source.path, source.descriptor, found))
    return [
        LocalDisk(disk, found[disk.file], disk.format, notes if i == 0 else ())
        for i, disk in enumerate(hardware.disks)
    ]


def check_present(source: Source) -> None:
    """For a plan: the disks a bare OVF, .vmx or .vbox names are there (an archive's are checked
    as it is read)."""
    if source.kind in ("ovf", "vmx", "vbox"):
        for disk in source.hardware.disks:
            inside(source.path.parent, disk.file, source.path.name)
