"""Appliances as other hypervisors export them, written by the tests: OVF descriptors (VMware and
VirtualBox flavours), OVA and XVA archives, .vmx and .vbox files."""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from virtkit.images.xvadisk import xxh64

MiB = 1024 * 1024
OVF_NS = (
    'xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" '
    'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" '
    'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"'
)
VMDK_URL = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


@dataclass(frozen=True)
class Disk:
    href: str
    capacity: int  # bytes


def _item(kind: int, **fields: str) -> str:
    inner = "".join(f"<rasd:{key}>{value}</rasd:{key}>" for key, value in fields.items())
    return f"<Item>{inner}<rasd:ResourceType>{kind}</rasd:ResourceType></Item>"


def _references(disks: list[Disk], sizes: dict[str, int] | None) -> tuple[str, str]:
    files = "".join(
        f'<File ovf:href="{d.href}" ovf:id="file{i}"'
        + (f' ovf:size="{sizes[d.href]}"' if sizes and d.href in sizes else "")
        + "/>"
        for i, d in enumerate(disks, 1)
    )
    section = "".join(
        f'<Disk ovf:capacity="{d.capacity}" ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}" '
        f'ovf:format="{VMDK_URL}"/>'
        for i, d in enumerate(disks, 1)
    )
    return f"<References>{files}</References>", f"<DiskSection><Info>disks</Info>{section}</DiskSection>"


def vmware_ovf(
    disks: list[Disk],
    *,
    name: str = "Web Server",
    cpus: str = "2",
    memory_mib: str = "384",
    firmware: str = "bios",
    nic: str = "E1000",
    sizes: dict[str, int] | None = None,
    extra: str = "",
) -> str:
    """An OVF as VMware's ovftool writes it: a SCSI (lsilogic) controller, an IDE one with a CD."""
    references, section = _references(disks, sizes)
    items = [
        _item(3, AllocationUnits="hertz * 10^6", InstanceID="1", VirtualQuantity=cpus),
        _item(4, AllocationUnits="byte * 2^20", InstanceID="2", VirtualQuantity=memory_mib),
        _item(6, InstanceID="3", ResourceSubType="lsilogic"),
        _item(5, InstanceID="4", Address="0"),
        _item(15, InstanceID="5", Parent="4", AddressOnParent="0", ElementName="CD/DVD drive 1"),
    ]
    items += [
        _item(
            17,
            AddressOnParent=str(i),
            HostResource=f"ovf:/disk/vmdisk{i + 1}",
            InstanceID=str(10 + i),
            Parent="3",
        )
        for i in range(len(disks))
    ]
    items.append(
        _item(
            10,
            AddressOnParent="7",
            Connection="VM Network",
            InstanceID="30",
            ResourceSubType=nic,
            Address="00:50:56:aa:bb:cc",
        )
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Envelope {OVF_NS} '
        'xmlns:vmw="http://www.vmware.com/schema/ovf">'
        f"{references}{section}<NetworkSection><Info>n</Info>"
        '<Network ovf:name="VM Network"/></NetworkSection>'
        f'<VirtualSystem ovf:id="{name}"><Info>A VM</Info><Name>{name}</Name>'
        '<OperatingSystemSection ovf:id="96" vmw:osType="debian10_64Guest"><Info>os</Info>'
        "</OperatingSystemSection><VirtualHardwareSection><Info>hw</Info><System>"
        "<vssd:ElementName>Virtual Hardware Family</vssd:ElementName>"
        "<vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType></System>"
        + "".join(items)
        + f'<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{firmware}"/>{extra}'
        "</VirtualHardwareSection></VirtualSystem></Envelope>\n"
    )


def virtualbox_ovf(
    disks: list[Disk], *, name: str = "vbox-vm", cpus: str = "1", memory_mib: str = "512", efi: bool = False
) -> str:
    """An OVF as VirtualBox exports it: IDE (PIIX4) with a CD, the disk on SATA (AHCI), MegaBytes
    units, and its vbox:Machine section (firmware, MACs)."""
    references, section = _references(disks, None)
    items = [
        _item(3, Caption=f"{cpus} virtual CPU", InstanceID="1", VirtualQuantity=cpus),
        _item(4, AllocationUnits="MegaBytes", InstanceID="2", VirtualQuantity=memory_mib),
        _item(5, InstanceID="3", ResourceSubType="PIIX4", Address="1"),
        _item(20, InstanceID="5", ResourceSubType="AHCI", Address="0"),
        _item(15, InstanceID="8", Parent="3", AddressOnParent="3"),
    ]
    items += [
        _item(
            17,
            AddressOnParent=str(i),
            HostResource=f"/disk/vmdisk{i + 1}",
            InstanceID=str(10 + i),
            Parent="5",
        )
        for i in range(len(disks))
    ]
    items.append(
        _item(10, AutomaticAllocation="true", Connection="NAT", InstanceID="20", ResourceSubType="E1000")
    )
    firmware = '<Firmware type="EFI"/>' if efi else ""
    return (
        f'<?xml version="1.0"?>\n<Envelope ovf:version="1.0" xml:lang="en-US" {OVF_NS} '
        'xmlns:vbox="http://www.virtualbox.org/ovf/machine">'
        f"{references}{section}"
        f'<VirtualSystem ovf:id="{name}"><Info>A VM</Info>'
        '<OperatingSystemSection ovf:id="96"><Info>os</Info><Description>Debian_64</Description>'
        "</OperatingSystemSection><VirtualHardwareSection><Info>hw</Info><System>"
        "<vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID>"
        "<vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType></System>"
        + "".join(items)
        + f'</VirtualHardwareSection><vbox:Machine ovf:required="false" version="1.16" name="{name}">'
        f"<ovf:Info>VirtualBox machine</ovf:Info><Hardware>{firmware}<Network>"
        '<Adapter slot="0" enabled="true" MACAddress="080027A1B2C3" type="82540EM"><NAT/></Adapter>'
        "</Network></Hardware></vbox:Machine></VirtualSystem></Envelope>\n"
    )


def manifest(files: dict[str, bytes], algorithm: str = "SHA256") -> bytes:
    return b"".join(
        f"{algorithm}({name})= {hashlib.new(algorithm.lower(), data).hexdigest()}\n".encode()
        for name, data in files.items()
    )


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def ova(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """An OVA: the members in the order given (the descriptor first, as ovftool writes it)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            add(tar, name, data)
    return path


def ova_package(
    path: Path,
    ovf_text: str,
    disks: dict[str, bytes],
    *,
    with_manifest: bool = True,
    algorithm: str = "SHA256",
) -> Path:
    stem = path.stem
    members = [(f"{stem}.ovf", ovf_text.encode())]
    if with_manifest:
        members.append((f"{stem}.mf", manifest({f"{stem}.ovf": ovf_text.encode(), **disks}, algorithm)))
    return ova(path, members + list(disks.items()))


def _v(value: object) -> str:
    if isinstance(value, dict):
        members = "".join(f"<member><name>{k}</name>{_v(v)}</member>" for k, v in value.items())
        return f"<value><struct>{members}</struct></value>"
    if isinstance(value, list):
        return f"<value><array><data>{''.join(_v(v) for v in value)}</data></array></value>"
    if isinstance(value, bool):
        return f"<value><boolean>{int(value)}</boolean></value>"
    return f"<value>{value}</value>"


def ova_xml(
    name: str, cpus: int, memory: int, sizes: list[int], *, firmware: str = "bios", policy: str = "BIOS order"
) -> bytes:
    """An XVA's ova.xml: a VM, its VBDs (disks, and a CD), their VDIs, a VIF on a network."""
    vdis = [f"Ref:{10 + i}" for i in range(len(sizes))]
    vbds = [f"Ref:{20 + i}" for i in range(len(sizes))] + ["Ref:29"]
    objects: list[dict[str, object]] = [
        {
            "class": "VM",
            "id": "Ref:1",
            "snapshot": {
                "name_label": name,
                "is_a_template": False,
                "is_a_snapshot": False,
                "VCPUs_max": str(cpus),
                "VCPUs_at_startup": str(cpus),
                "memory_static_max": str(memory),
                "HVM_boot_policy": policy,
                "HVM_boot_params": {"order": "cd", "firmware": firmware},
                "VBDs": vbds,
                "VIFs": ["Ref:40"],
                "other_config": {"os-version": "debian"},
            },
        }
    ]
    for i, (vbd, vdi, size) in enumerate(zip(vbds, vdis, sizes, strict=False)):
        objects.append(
            {
                "class": "VBD",
                "id": vbd,
                "snapshot": {
                    "VM": "Ref:1",
                    "VDI": vdi,
                    "userdevice": str(i),
                    "type": "Disk",
                    "bootable": i == 0,
                },
            }
        )
        objects.append(
            {"class": "VDI", "id": vdi, "snapshot": {"name_label": f"disk {i}", "virtual_size": str(size)}}
        )
    objects.append(
        {
            "class": "VBD",
            "id": "Ref:29",
            "snapshot": {"VM": "Ref:1", "VDI": "OpaqueRef:NULL", "userdevice": "3", "type": "CD"},
        }
    )
    objects.append(
        {
            "class": "VIF",
            "id": "Ref:40",
            "snapshot": {"device": "0", "MAC": "aa:bb:cc:00:11:22", "network": "Ref:50"},
        }
    )
    objects.append({"class": "network", "id": "Ref:50", "snapshot": {"name_label": "Pool-wide network"}})
    return _v({"version": {"hostname": "xen1"}, "objects": objects}).encode()


def xva(
    path: Path,
    descriptor: bytes,
    disks: dict[str, bytes],
    *,
    checksum: str = ".checksum",
    keep_zero: tuple[int, ...] = (),
) -> Path:
    """An XVA: ova.xml, then each disk's 1 MiB chunks with their checksums, all-zero chunks left out
    (but the first and the last, as XAPI does, and those in `keep_zero`)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        add(tar, "ova.xml", descriptor)
        for ref, data in disks.items():
            count = -(-len(data) // MiB)
            for index in range(count):
                chunk = data[index * MiB : (index + 1) * MiB]
                if chunk.count(0) == len(chunk) and index not in (0, count - 1, *keep_zero):
                    continue
                add(tar, f"{ref}/{index:08d}", chunk)
                digest = (
                    hashlib.sha1(chunk).hexdigest() if checksum == ".checksum" else f"{xxh64(chunk):016X}"
                )
                add(tar, f"{ref}/{index:08d}{checksum}", digest.encode())
    return path


def vmx(
    disks: list[tuple[str, str]],
    *,
    cpus: int = 2,
    memsize: int = 512,
    firmware: str = "bios",
    extra: str = "",
) -> str:
    """A .vmx as VMware Workstation writes it; `disks` are (slot such as "scsi0:0", fileName)."""
    lines = [
        '.encoding = "UTF-8"',
        'config.version = "8"',
        'virtualHW.version = "19"',
        f'numvcpus = "{cpus}"',
        f'memsize = "{memsize}"',
        'displayName = "Build Box"',
        'guestOS = "debian11-64"',
        f'firmware = "{firmware}"',
        'scsi0.present = "TRUE"',
        'scsi0.virtualDev = "lsilogic"',
        'ide1:0.present = "TRUE"',
        'ide1:0.deviceType = "cdrom-image"',
        'ide1:0.fileName = "/isos/debian.iso"',
        'ethernet0.present = "TRUE"',
        'ethernet0.virtualDev = "e1000"',
        'ethernet0.addressType = "generated"',
        'ethernet0.generatedAddress = "00:0c:29:12:34:56"',
        'ethernet0.connectionType = "nat"',
    ]
    for slot, file in disks:
        lines += [f'{slot}.present = "TRUE"', f'{slot}.fileName = "{file}"']
    return "\n".join(lines) + "\n" + extra
