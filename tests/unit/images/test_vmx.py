"""VMware .vmx and VirtualBox .vbox files read into hardware; what leads outside, or is no such file,
refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.images import v2vbuild
from virtkit.errors import NotFoundError, RejectedError, SpecError
from virtkit.images import foreign
from virtkit.images.appliance import kind_of
from virtkit.images.vmx import parse_vbox, parse_vmx

MiB = 1024 * 1024


def test_vmx_hardware() -> None:
    text = v2vbuild.vmx(
        [("scsi0:1", "data.vmdk"), ("scsi0:0", "Build Box.vmdk"), ("sata0:0", "extra.vmdk")],
        cpus=4,
        memsize=2048,
        firmware="efi",
        extra='sata0.present = "TRUE"\n',
    )
    hardware = parse_vmx(text.encode(), "build.vmx")
    assert (hardware.source, hardware.name, hardware.cpus, hardware.memory) == (
        "VMware",
        "Build Box",
        4,
        2048 * MiB,
    )
    assert hardware.firmware == "uefi" and hardware.os == "debian11-64"
    assert [(d.file, d.bus, d.controller) for d in hardware.disks] == [
        ("extra.vmdk", "sata", "SATA"),
        ("Build Box.vmdk", "scsi", "lsilogic"),
        ("data.vmdk", "scsi", "lsilogic"),
    ]
    assert [(n.model, n.mac, n.network) for n in hardware.nics] == [("e1000", "00:0c:29:12:34:56", "nat")]
    assert any("CD-ROM ide1:0" in note for note in hardware.notes)


def test_vmx_boot_order_and_absent_devices() -> None:
    text = v2vbuild.vmx(
        [("scsi0:0", "a.vmdk"), ("nvme0:0", "b.vmdk"), ("ide0:0", "c.vmdk")],
        extra='bios.hddOrder = "nvme0:0"\nide0:0.present = "FALSE"\nnvme0.present = "TRUE"\n',
    )
    hardware = parse_vmx(text.encode(), "x.vmx")
    assert [(d.file, d.bus) for d in hardware.disks] == [("b.vmdk", "nvme"), ("a.vmdk", "scsi")]
    assert hardware.firmware == "bios"


def test_vmx_keys_are_case_insensitive_and_defaults() -> None:
    hardware = parse_vmx(b'MemSize = "256"\nSCSI0:0.FileName = "d.vmdk"\n', "x.vmx")
    assert (hardware.cpus, hardware.memory, [d.file for d in hardware.disks]) == (1, 256 * MiB, ["d.vmdk"])


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        (b'numvcpus = "1000000000"\n', SpecError, "CPUs"),
        (b'memsize = "1073741824"\n', SpecError, "of memory"),  # 1 PiB in MiB
        (b'memsize = "lots"\n', SpecError, "invalid memsize"),
        (b'scsi0:0.fileName = "../../etc/shadow"\n', RejectedError, "outside the package"),
        (b'scsi0:0.fileName = "/vmfs/volumes/ds1/vm/vm.vmdk"\n', RejectedError, "absolute path"),
        (b"this is not a vmx\n", RejectedError, "not key"),
        (b"", RejectedError, "holds no settings"),
    ],
)
def test_vmx_refusals(text: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_vmx(text, "x.vmx")


def test_vmx_disks_must_be_beside_it(tmp_path: Path) -> None:
    (tmp_path / "vm.vmx").write_text(v2vbuild.vmx([("scsi0:0", "vm.vmdk")]))
    assert kind_of(tmp_path / "vm.vmx") == "vmx"
    source = foreign.read(tmp_path / "vm.vmx")
    with pytest.raises(RejectedError, match="not there"):
        foreign.check_present(source)
    (tmp_path / "vm.vmdk").symlink_to("/etc/passwd")
    with pytest.raises(RejectedError, match="outside the package"):
        foreign.check_present(source)
    (tmp_path / "vm.vmdk").unlink()
    (tmp_path / "vm.vmdk").write_bytes(b"KDMV")
    assert [d.path for d in foreign.disks(source, tmp_path / "unused")] == [tmp_path / "vm.vmdk"]


VBOX = """<?xml version="1.0"?>
<VirtualBox xmlns="http://www.virtualbox.org/" version="1.16-linux">
  <Machine uuid="{aaaa}" name="devbox" OSType="Debian_64">
    <MediaRegistry><HardDisks>
      <HardDisk uuid="{d1}" location="devbox.vdi" format="VDI" type="Normal"/>
      <HardDisk uuid="{d2}" location="data/devbox-data.vdi" format="VDI" type="Normal"/>
    </HardDisks></MediaRegistry>
    <Hardware>
      <CPU count="2"/><Memory RAMSize="1024"/>{firmware}
      <Network><Adapter slot="0" enabled="true" MACAddress="0800271A2B3C" type="virtio"/>
               <Adapter slot="1" enabled="false" MACAddress="0800271A2B3D" type="82540EM"/></Network>
    </Hardware>
    <StorageControllers>
      <StorageController name="IDE" type="PIIX4" PortCount="2"><AttachedDevice passthrough="false" type="DVD"
          port="1" device="0"/></StorageController>
      <StorageController name="SATA" type="AHCI" PortCount="2">
        <AttachedDevice type="HardDisk" port="1" device="0"><Image uuid="{d2}"/></AttachedDevice>
        <AttachedDevice type="HardDisk" port="0" device="0"><Image uuid="{d1}"/></AttachedDevice>
      </StorageController>
    </StorageControllers>
  </Machine>
</VirtualBox>
"""


def test_vbox_hardware() -> None:
    hardware = parse_vbox(VBOX.replace("{firmware}", '<Firmware type="EFI"/>').encode(), "devbox.vbox")
    assert (hardware.source, hardware.name, hardware.cpus, hardware.memory) == (
        "VirtualBox",
        "devbox",
        2,
        1024 * MiB,
    )
    assert hardware.firmware == "uefi" and hardware.os == "Debian_64"
    assert [(d.file, d.bus) for d in hardware.disks] == [
        ("devbox.vdi", "sata"),
        ("data/devbox-data.vdi", "sata"),
    ]
    assert [(n.model, n.mac) for n in hardware.nics] == [("virtio", "08:00:27:1a:2b:3c")]
    assert parse_vbox(VBOX.replace("{firmware}", "").encode(), "x.vbox").firmware == "bios"


def test_vbox_refusals() -> None:
    with pytest.raises(RejectedError, match="not a VirtualBox machine"):
        parse_vbox(b"<Envelope/>", "x.vbox")
    outside = VBOX.replace("{firmware}", "").replace("data/devbox-data.vdi", "/home/user/VMs/x.vdi")
    with pytest.raises(RejectedError, match="absolute path"):
        parse_vbox(outside.encode(), "x.vbox")
    unknown = VBOX.replace("{firmware}", "").replace('<Image uuid="{d2}"/>', '<Image uuid="{zz}"/>')
    with pytest.raises(RejectedError, match="MediaRegistry"):
        parse_vbox(unknown.encode(), "x.vbox")
    laughs = b'<!DOCTYPE v [<!ENTITY a "aaaa">]><VirtualBox>&a;</VirtualBox>'
    with pytest.raises(RejectedError, match="DTD"):
        parse_vbox(laughs, "x.vbox")
    huge = VBOX.replace("{firmware}", "").replace('RAMSize="1024"', 'RAMSize="1073741824"')
    with pytest.raises(SpecError, match="of memory"):
        parse_vbox(huge.encode(), "x.vbox")


def test_kind_of_checks_extension_against_bytes(tmp_path: Path) -> None:
    fake = tmp_path / "x.ova"
    fake.write_text("<Envelope/>")
    with pytest.raises(RejectedError, match="not a tar archive"):
        kind_of(fake)
    xml = tmp_path / "x.vmx"
    xml.write_text("<VirtualBox/>")
    with pytest.raises(RejectedError, match=r"not a \.vmx"):
        kind_of(xml)
    (tmp_path / "y.vbox").write_text("numvcpus = 2")
    with pytest.raises(RejectedError, match="not an XML document"):
        kind_of(tmp_path / "y.vbox")
    with pytest.raises(NotFoundError, match="no such file"):
        kind_of(tmp_path / "missing.vmx")
