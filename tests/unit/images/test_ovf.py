"""OVF descriptors (VMware and VirtualBox flavours) read into hardware, hostile XML refused, and OVA
packages extracted and checked (manifest, members, truncation) with nothing left on failure."""

from __future__ import annotations

import dataclasses
import tarfile
from pathlib import Path

import pytest

from tests.unit.images import v2vbuild
from tests.unit.images.v2vbuild import Disk
from virtkit.errors import RejectedError, SpecError
from virtkit.images import foreign, ova, ovf
from virtkit.images.appliance import kind_of

MiB = 1024 * 1024
GiB = 1024 * MiB


def test_vmware_flavour() -> None:
    text = v2vbuild.vmware_ovf(
        [Disk("web-disk1.vmdk", 10 * GiB), Disk("web-disk2.vmdk", GiB)], firmware="efi"
    )
    hardware = ovf.parse(text.encode(), "web.ovf")
    assert (hardware.source, hardware.name, hardware.cpus, hardware.memory) == (
        "VMware",
        "Web Server",
        2,
        384 * MiB,
    )
    assert hardware.firmware == "uefi" and hardware.os == "debian10_64Guest"
    assert [(d.file, d.bus, d.controller, d.capacity, d.format) for d in hardware.disks] == [
        ("web-disk1.vmdk", "scsi", "lsilogic", 10 * GiB, "vmdk"),
        ("web-disk2.vmdk", "scsi", "lsilogic", GiB, "vmdk"),
    ]
    assert [(n.model, n.mac, n.network) for n in hardware.nics] == [
        ("E1000", "00:50:56:aa:bb:cc", "VM Network")
    ]
    assert any("CD/DVD" in note for note in hardware.notes)


def test_virtualbox_flavour() -> None:
    text = v2vbuild.virtualbox_ovf(
        [Disk("vbox-vm-disk001.vmdk", 8 * GiB)], cpus="4", memory_mib="2048", efi=True
    )
    hardware = ovf.parse(text.encode(), "vbox.ovf")
    assert (hardware.source, hardware.name, hardware.cpus, hardware.memory) == (
        "VirtualBox",
        "vbox-vm",
        4,
        2 * GiB,
    )
    assert hardware.firmware == "uefi" and hardware.os == "Debian_64"
    assert [(d.bus, d.controller) for d in hardware.disks] == [("sata", "AHCI")]
    assert [(n.model, n.mac) for n in hardware.nics] == [("E1000", "08:00:27:a1:b2:c3")]
    bios = v2vbuild.virtualbox_ovf([Disk("d.vmdk", GiB)])
    assert ovf.parse(bios.encode(), "vbox.ovf").firmware is None  # not said: the mapping takes bios


def test_disk_order_follows_controllers_and_addresses() -> None:
    text = v2vbuild.vmware_ovf([Disk("a.vmdk", GiB), Disk("b.vmdk", GiB), Disk("c.vmdk", GiB)])
    # Put disk 1 at address 2: it then comes last.
    text = text.replace(
        "<rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/vmdisk1",
        "<rasd:AddressOnParent>2</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/vmdisk1",
    )
    text = text.replace(
        "<rasd:AddressOnParent>2</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/vmdisk3",
        "<rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/vmdisk3",
    )
    assert [d.file for d in ovf.parse(text.encode(), "x.ovf").disks] == ["c.vmdk", "b.vmdk", "a.vmdk"]


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><VirtualSystem>&xxe;</VirtualSystem></Envelope>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><Envelope>&lol3;</Envelope>"""
EXTERNAL_DTD = (
    b"""<?xml version="1.0"?><!DOCTYPE Envelope SYSTEM "http://example.invalid/ovf.dtd"><Envelope/>"""
)
PARAMETER = (
    b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/shadow"> %p;]><Envelope/>"""
)


@pytest.mark.parametrize(
    "data", [XXE, LAUGHS, EXTERNAL_DTD, PARAMETER], ids=["xxe", "laughs", "dtd", "param"]
)
def test_hostile_xml_is_refused(data: bytes) -> None:
    with pytest.raises(RejectedError, match="DTD or entities"):
        ovf.parse(data, "evil.ovf")


def test_malformed_and_foreign_xml() -> None:
    with pytest.raises(RejectedError, match="not well-formed"):
        ovf.parse(b"<Envelope><VirtualSystem></Envelope>", "bad.ovf")
    with pytest.raises(RejectedError, match="not an OVF descriptor"):
        ovf.parse(b"<html/>", "page.ovf")
    with pytest.raises(RejectedError, match="more than the"):
        ovf.parse(b"<Envelope>" + b" " * (5 * MiB) + b"</Envelope>", "big.ovf")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"memory_mib": str(1024**3)}, "of memory"),  # 1 PiB
        ({"cpus": str(10**9)}, "CPUs"),
        ({"cpus": "9" * 60}, "invalid CPU count"),
        ({"cpus": "-2"}, "invalid CPU count"),
        ({"memory_mib": "0x10"}, "invalid memory size"),
    ],
)
def test_huge_or_bad_values_are_spec_errors(change: dict[str, str], message: str) -> None:
    text = v2vbuild.vmware_ovf([Disk("d.vmdk", GiB)], **change)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match=message):
        ovf.parse(text.encode(), "x.ovf")


def test_ten_thousand_disks_and_huge_capacity() -> None:
    count = 10_000
    files = "".join(f'<File ovf:href="d{i}" ovf:id="f{i}"/>' for i in range(count))
    disks = "".join(f'<Disk ovf:diskId="k{i}" ovf:fileRef="f{i}"/>' for i in range(count))
    drives = "".join(
        f"<Item><rasd:HostResource>/disk/k{i}</rasd:HostResource><rasd:ResourceType>17"
        "</rasd:ResourceType></Item>"
        for i in range(count)
    )
    text = (
        f"<Envelope {v2vbuild.OVF_NS}><References>{files}</References><DiskSection>{disks}</DiskSection>"
        f"<VirtualSystem><VirtualHardwareSection>{drives}</VirtualHardwareSection></VirtualSystem></Envelope>"
    )
    with pytest.raises(SpecError, match="10000 disks"):
        ovf.parse(text.encode(), "many.ovf")
    with pytest.raises(SpecError, match="capacity"):
        ovf.parse(v2vbuild.vmware_ovf([Disk("d.vmdk", 2**70)]).encode(), "x.ovf")


@pytest.mark.parametrize(
    "href", ["../../etc/shadow", "/etc/shadow", "a/../../b.vmdk", "C:\\disk.vmdk", "./a/./b"]
)
def test_disks_outside_the_package_are_refused(href: str) -> None:
    text = v2vbuild.vmware_ovf([Disk(href, GiB)])
    with pytest.raises((RejectedError, SpecError)):
        ovf.parse(text.encode(), "x.ovf")


def test_structural_refusals() -> None:
    text = v2vbuild.vmware_ovf([Disk("d.vmdk", GiB)])
    two = text.replace("</VirtualSystem>", "</VirtualSystem><VirtualSystem ovf:id='b'/>")
    with pytest.raises(SpecError, match="2 virtual systems"):
        ovf.parse(two.encode(), "x.ovf")
    dangling = text.replace('ovf:fileRef="file1"', 'ovf:fileRef="nope"')
    with pytest.raises(RejectedError, match="References do not list"):
        ovf.parse(dangling.encode(), "x.ovf")
    compressed = text.replace('ovf:id="file1"', 'ovf:id="file1" ovf:compression="gzip"')
    with pytest.raises(RejectedError, match="compressed"):
        ovf.parse(compressed.encode(), "x.ovf")
    with pytest.raises(SpecError, match="allocation unit"):
        ovf.parse(text.replace("byte * 2^20", "furlongs").encode(), "x.ovf")


# --- OVA packages ---------------------------------------------------------------------------------


def _package(tmp_path: Path, **options: bool) -> tuple[Path, dict[str, bytes]]:
    disks = {"web-disk1.vmdk": b"KDMV" + bytes(200_000) + b"data", "web-disk2.vmdk": b"second disk" * 1000}
    text = v2vbuild.vmware_ovf([Disk(name, GiB) for name in disks])
    return v2vbuild.ova_package(tmp_path / "web.ova", text, disks, **options), disks


def _extract(path: Path, dest: Path) -> dict[str, Path]:
    source = foreign.read(path)
    dest.mkdir(exist_ok=True)
    files, _notes = ova.extract(path, dest, source.hardware, source.descriptor)
    return files


def test_ova_extracts_the_disks_and_checks_the_manifest(tmp_path: Path) -> None:
    path, disks = _package(tmp_path)
    assert kind_of(path) == "ova"
    files = _extract(path, tmp_path / "out")
    assert {name: file.read_bytes() for name, file in files.items()} == disks
    assert foreign.read(path).hardware.format == "ova"


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA512"])
def test_ova_manifest_algorithms(tmp_path: Path, algorithm: str) -> None:
    path, _disks = _package(tmp_path, algorithm=algorithm)  # type: ignore[arg-type]
    assert len(_extract(path, tmp_path / "out")) == 2


def test_ova_manifest_mismatch(tmp_path: Path) -> None:
    disks = {"d.vmdk": b"disk data"}
    text = v2vbuild.vmware_ovf([Disk("d.vmdk", GiB)])
    members = [
        ("web.ovf", text.encode()),
        ("web.mf", v2vbuild.manifest({"d.vmdk": b"other data"})),
        ("d.vmdk", disks["d.vmdk"]),
    ]
    path = v2vbuild.ova(tmp_path / "web.ova", members)
    with pytest.raises(RejectedError, match=r"SHA256 digest of 'd\.vmdk'"):
        _extract(path, tmp_path / "out")


def test_ova_refusals(tmp_path: Path) -> None:
    text = v2vbuild.vmware_ovf([Disk("d.vmdk", GiB)]).encode()
    missing = v2vbuild.ova(tmp_path / "missing.ova", [("m.ovf", text)])
    with pytest.raises(RejectedError, match=r"does not hold disk 'd\.vmdk'"):
        _extract(missing, tmp_path / "a")
    late = v2vbuild.ova(tmp_path / "late.ova", [("d.vmdk", b"x"), ("m.ovf", text)])
    with pytest.raises(RejectedError, match=r"first member is 'd\.vmdk'"):
        foreign.read(late)
    link = tmp_path / "link.ova"
    with tarfile.open(link, "w", format=tarfile.USTAR_FORMAT) as tar:
        v2vbuild.add(tar, "m.ovf", text)
        info = tarfile.TarInfo("d.vmdk")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(info)
    with pytest.raises(RejectedError, match="symbolic link"):
        _extract(link, tmp_path / "b")
    device = tmp_path / "device.ova"
    with tarfile.open(device, "w", format=tarfile.USTAR_FORMAT) as tar:
        v2vbuild.add(tar, "m.ovf", text)
        info = tarfile.TarInfo("d.vmdk")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(info)
    with pytest.raises(RejectedError, match="device node"):
        _extract(device, tmp_path / "c")
    unlisted = v2vbuild.ova(tmp_path / "unlisted.ova", [("m.ovf", text), ("m.mf", b""), ("d.vmdk", b"x")])
    with pytest.raises(RejectedError, match="not in its manifest"):
        _extract(unlisted, tmp_path / "d")
    sized = v2vbuild.vmware_ovf([Disk("d.vmdk", GiB)], sizes={"d.vmdk": 5}).encode()
    wrong = v2vbuild.ova(tmp_path / "sized.ova", [("m.ovf", sized), ("d.vmdk", b"x")])
    with pytest.raises(RejectedError, match="its descriptor says 5"):
        _extract(wrong, tmp_path / "e")


def test_truncated_ova(tmp_path: Path) -> None:
    path, _disks = _package(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) - 15_000, len(data) // 2, 3000):
        short = tmp_path / f"cut{cut}.ova"
        short.write_bytes(data[:cut])
        with pytest.raises(RejectedError, match=r"truncated|breaks off|not a tar"):
            _extract(short, tmp_path / f"out{cut}")


def test_changed_descriptor_is_noticed(tmp_path: Path) -> None:
    path, _disks = _package(tmp_path)
    source = foreign.read(path)
    changed = dataclasses.replace(source, descriptor=source.descriptor + b" ")
    (tmp_path / "out").mkdir()
    with pytest.raises(RejectedError, match="changed while"):
        ova.extract(path, tmp_path / "out", changed.hardware, changed.descriptor)


def test_bare_ovf_finds_its_disks_and_checks_its_manifest(tmp_path: Path) -> None:
    (tmp_path / "d.vmdk").write_bytes(b"disk")
    text = v2vbuild.vmware_ovf([Disk("d.vmdk", GiB)])
    (tmp_path / "vm.ovf").write_text(text)
    (tmp_path / "vm.mf").write_bytes(v2vbuild.manifest({"vm.ovf": text.encode(), "d.vmdk": b"disk"}))
    source = foreign.read(tmp_path / "vm.ovf")
    local = foreign.disks(source, tmp_path / "unused")
    assert [d.path for d in local] == [tmp_path / "d.vmdk"]
    (tmp_path / "d.vmdk").write_bytes(b"DISK")
    with pytest.raises(RejectedError, match="digest"):
        foreign.disks(source, tmp_path / "unused")
    (tmp_path / "d.vmdk").unlink()
    (tmp_path / "d.vmdk").symlink_to("/etc/hostname")
    with pytest.raises(RejectedError, match="outside the package"):
        foreign.check_present(source)
    (tmp_path / "d.vmdk").unlink()
    with pytest.raises(RejectedError, match="not there"):
        foreign.check_present(source)
