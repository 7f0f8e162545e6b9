"""What an appliance from another hypervisor says about its virtual machine, whatever its format.

The readers (ovf.py for OVA/OVF, vmx.py for VMware's .vmx and VirtualBox's .vbox, xva.py for
XenServer's XVA) each turn their descriptor into one `Hardware`: who made it, its CPUs, memory,
firmware, its disks in boot order with the controller each sat on, its NICs with their models.
`check` bounds every number (a descriptor is untrusted: 10^9 CPUs or 1 PiB of memory are typos or
attacks, refused with a SpecError), and `parse_xml` is the only way descriptors are read as XML:
through defusedxml, DTDs refused outright (so no entity expansion, no external entity, no
billion laughs) and the document bounded in size before it is parsed.

`kind_of(path)` tells which reader a file is for: by its extension, checked against its bytes.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

from virtkit.errors import NotFoundError, RejectedError, SpecError
from virtkit.images.detect import DISK_FORMATS, EXTENSIONS, HEAD_SIZE, printable, sniff
from virtkit.units import MiB, TiB, format_size

MAX_CPUS = 288  # q35's limit with x2APIC; past it a count is a typo or an attack
MAX_MEMORY = 16 * TiB
MAX_DISKS = 32  # a root disk and the volumes a VM may have
MAX_NICS = 16
MAX_DESCRIPTOR = 4 * MiB  # an OVF or .vmx is a few KiB; an XVA's ova.xml some hundreds
MAX_NAME = 255
MAX_DIGITS = 24  # a number in a descriptor longer than this is no CPU count or size

KINDS = ("ova", "ovf", "vmx", "vbox", "xva", "disk")
_EXTENSIONS = {".ova": "ova", ".ovf": "ovf", ".vmx": "vmx", ".vbox": "vbox", ".xva": "xva"}
# Disk controllers a guest without virtio drivers has drivers for, as the readers name buses.
BUSES = ("ide", "sata", "scsi", "nvme", "virtio", "xen", "unknown")


@dataclass(frozen=True)
class DiskRef:
    """One disk as the descriptor names it.

    `file` is where its data is: a file name inside the package (an OVA member, a file beside the
    OVF or .vmx, relative to it), or an XVA's VDI reference ("Ref:12"). `bus` is the controller
    kind it sat on (BUSES), `controller` the model ("lsilogic", "PIIX4", "AHCI", ...).
    """

    file: str
    bus: str = "unknown"
    controller: str = ""
    capacity: int | None = None  # bytes, as the descriptor says
    format: str | None = None  # what the descriptor says the file is (QEMU's names), if it says
    size: int | None = None  # bytes of the file itself (an OVF's References say it)


@dataclass(frozen=True)
class NicRef:
    """One network adapter: its model as the source names it, its MAC, the network it was on."""

    model: str
    mac: str | None = None
    network: str = ""


@dataclass(frozen=True)
class Hardware:
    """A virtual machine as its source hypervisor described it (None: the descriptor did not say)."""

    source: str  # "VMware", "VirtualBox", "XenServer", "Hyper-V or Xen", "unknown"
    format: str  # one of KINDS
    name: str | None = None
    cpus: int | None = None
    memory: int | None = None  # bytes
    firmware: str | None = None  # "bios" | "uefi"
    disks: tuple[DiskRef, ...] = ()
    nics: tuple[NicRef, ...] = ()
    os: str = ""
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        return data


def check(hardware: Hardware, label: str) -> Hardware:
    """`hardware` when every number in it is one a VM can have; SpecError naming the first that is not."""
    if hardware.cpus is not None and not 1 <= hardware.cpus <= MAX_CPUS:
        raise SpecError(
            f"{label} asks for {hardware.cpus} CPUs: a VM here has 1 to {MAX_CPUS}",
            hint="pass --cpus N to choose another count",
        )
    if hardware.memory is not None and not MiB <= hardware.memory <= MAX_MEMORY:
        raise SpecError(
            f"{label} asks for {format_size(hardware.memory)} of memory: a VM here has "
            f"1MiB to {format_size(MAX_MEMORY)}",
            hint="pass --memory SIZE",
        )
    if len(hardware.disks) > MAX_DISKS:
        raise SpecError(f"{label} describes {len(hardware.disks)} disks: a VM here has at most {MAX_DISKS}")
    if len(hardware.nics) > MAX_NICS:
        raise SpecError(f"{label} describes {len(hardware.nics)} NICs: a VM here has at most {MAX_NICS}")
    for disk in hardware.disks:
        if disk.capacity is not None and not 0 < disk.capacity <= 64 * TiB:
            raise SpecError(
                f"{label} gives disk {printable(disk.file)} a capacity of "
                f"{format_size(disk.capacity)}: at most 64TiB"
            )
    return hardware


def number(text: str | None, what: str, label: str) -> int | None:
    """A decimal number from a descriptor; None when absent; SpecError when it is no small number."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if len(text) > MAX_DIGITS or not text.isdigit() or not text.isascii():
        raise SpecError(f"{label}: invalid {what} {printable(text, 40)!r}", hint="a whole number is expected")
    return int(text)


def file_name(text: str, label: str, *, nested: bool = True) -> str:
    """A disk's file name from a descriptor, relative to the package and staying inside it.

    Absolute names, `..`, backslashes, control characters are refused (RejectedError); `nested`
    allows sub-directories (``disks/a.vmdk``), else only a plain name is."""
    shown = printable(text, 80)
    if not text or len(text) > MAX_NAME * 4 or not text.isprintable():
        raise RejectedError(f"{label} names a disk file {shown!r}: empty, too long or unprintable")
    if text.startswith("/") or "\\" in text or re.match(r"^[A-Za-z]:", text):
        raise RejectedError(
            f"{label} names a disk by the absolute path {shown!r}: a package's disks must be inside it",
            hint="copy the disk beside the descriptor and name it by its file name",
        )
    parts = text.removeprefix("./").split("/")
    if any(part in ("", ".", "..") or len(part) > MAX_NAME for part in parts) or (
        len(parts) > 1 and not nested
    ):
        raise RejectedError(
            f"{label} names a disk {shown!r} outside the package (or with an empty, '.' or '..' part)",
            hint="a package's disks are files inside it",
        )
    return "/".join(parts)


def inside(directory: Path, name: str, label: str) -> Path:
    """The file `name` (checked by `file_name`) in `directory`, refused when it leads out of it (a
    symlink) or is missing."""
    path = directory / name
    if not os.path.lexists(path):
        raise RejectedError(
            f"{label} names disk {printable(name)!r}, which is not there ({path})",
            hint="put every disk the descriptor names beside it",
        )
    real, top = os.path.realpath(path), os.path.realpath(directory)
    if not real.startswith(top.rstrip("/") + "/"):
        raise RejectedError(f"{label}: disk {printable(name)!r} is a link to {real}, outside the package")
    return path


def parse_xml(data: bytes, label: str) -> Element:
    """The root element of an XML descriptor, parsed safely (see the module's doc)."""
    import defusedxml.ElementTree as safe  # type: ignore[import-untyped]
    from defusedxml import DefusedXmlException

    if len(data) > MAX_DESCRIPTOR:
        raise RejectedError(
            f"{label} is {format_size(len(data))}: more than the "
            f"{format_size(MAX_DESCRIPTOR)} a descriptor may have"
        )
    try:
        root: Element = safe.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise RejectedError(
            f"{label} is refused: it has a DTD or entities ({type(exc).__name__}), which "
            "descriptors never need and attacks do",
            hint="export the VM again",
        ) from None
    except Exception as exc:
        raise RejectedError(f"{label} is not well-formed XML: {printable(str(exc))}") from None
    return root


def local(tag: str) -> str:
    """An element's or attribute's name without its namespace: "{...envelope/1}Disk" → "Disk"."""
    return tag.rsplit("}", 1)[-1]


def attr(element: Element, name: str) -> str | None:
    """Attribute `name` of `element` in any namespace (ovf:href, vbox:href, href)."""
    for key, value in element.attrib.items():
        if local(key) == name:
            return value
    return None


def children(element: Element, name: str) -> list[Element]:
    return [child for child in element if local(child.tag) == name]


def child_text(element: Element, name: str) -> str | None:
    found = next((child for child in element if local(child.tag) == name), None)
    return (found.text or "").strip() if found is not None else None


def kind_of(path: Path) -> str:
    """Which reader `path` is for (one of KINDS): its extension, checked against its first bytes."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read below forever
            raise RejectedError(f"{path} is not a regular file", hint="give the appliance's file")
        with path.open("rb") as file:
            head = file.read(HEAD_SIZE)
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {path}") from None
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror or exc}") from None
    claimed = _EXTENSIONS.get(path.suffix.lower())
    tar = head[257:262] == b"ustar"
    xml = head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")
    if claimed in ("ova", "xva") and not tar:
        raise RejectedError(
            f"{path.name} is not a tar archive, so not an {claimed.upper()}",
            hint="an OVA or XVA is a tar file: check it was copied whole",
        )
    if claimed in ("ovf", "vbox") and not xml:
        raise RejectedError(f"{path.name} is not an XML document, so not an {claimed.upper()} descriptor")
    if claimed == "vmx" and (xml or tar or b"\0" in head):
        raise RejectedError(f'{path.name} is not a .vmx file (VMware\'s key = "value" text)')
    if claimed is not None:
        return claimed
    if sniff(head) in DISK_FORMATS or EXTENSIONS.get(path.suffix.lower()) in DISK_FORMATS:
        return "disk"  # (a VDI starts with "<<< Oracle VM VirtualBox Disk Image >>>": no XML)
    if tar:  # an XVA's first member is ova.xml, an OVA's its .ovf
        return "xva" if head[:100].split(b"\0")[0].removeprefix(b"./") == b"ova.xml" else "ova"
    if xml:
        return "ovf"
    return "disk"
