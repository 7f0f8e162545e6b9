"""`virtkit import-vm` as a user types it: appliances from VMware (OVA, OVF, VMX), VirtualBox (OVF,
VBOX+VDI), XenServer (XVA), Hyper-V and Xen (VHDX, VHD) become VMs with the source's CPUs, memory
and firmware; a few are booted (TCG: SeaBIOS, then extlinux, on emulated AHCI disks), the others
checked by `show --json` and qemu-img. Hostile appliances are refused and leave the state root
exactly as it was.

The bootable disk is the one test_vm_firmware.py boots (tests/e2e/bootdisk.py: extlinux and the
tiny image's kernel); qemu-img converts it to each format as the other hypervisors export them.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import bootdisk
from tests.e2e.bootdisk import Payload
from tests.e2e.conftest import Cli, seed_root
from tests.e2e.netlab import Lab, lab  # noqa: F401  (the fixture)
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_firmware import wait_console
from tests.e2e.test_vm_lifecycle import state_of, tiny  # noqa: F401  (the fixture)
from tests.permissions import reachable
from tests.unit.images import v2vbuild
from tests.unit.images.v2vbuild import Disk

MiB = 1024 * 1024
DISK_SIZE = 32 * MiB
IMPORT_TIMEOUT = 120


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, tiny_template: Path) -> dict[str, Path]:
    """The bootable BIOS disk as raw, and converted to each format, made once for the module."""
    missing = sorted(set(bootdisk.missing("bios") + bootdisk.missing("uefi")))
    if missing:
        pytest.fail(f"making boot media needs: apt-get install {' '.join(missing)} (scripts/dev.sh)")
    directory = reachable(tmp_path_factory.mktemp("v2v-media") / "media")
    directory.mkdir(mode=0o755)
    images = tiny_template / "images"
    shown = subprocess.run(
        [str(Path(os.sys.executable).parent / "virtkit"), "image", "show", "tiny", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "VIRTKIT_ROOT": str(tiny_template)},
    )
    image = json.loads(shown.stdout)
    found = images / image["fingerprint"]
    payload = Payload(found / image["files"]["kernel"], found / image["files"]["initrd"])
    raw = bootdisk.bios_disk(directory / "boot.raw", payload, size=DISK_SIZE)
    made = {"raw": raw}
    for name, fmt, options in (
        ("stream.vmdk", "vmdk", "subformat=streamOptimized"),
        ("sparse.vmdk", "vmdk", "subformat=monolithicSparse"),
        ("disk.vdi", "vdi", ""),
        ("disk.vhdx", "vhdx", ""),
        ("disk.vhd", "vpc", ""),
    ):
        target = directory / name
        qemu_img(
            "convert", "-f", "raw", "-O", fmt, *(["-o", options] if options else []), str(raw), str(target)
        )
        made[name] = target
    esp = bootdisk.uefi_disk(directory / "esp.raw", payload, directory)
    made["esp.vmdk"] = directory / "esp.vmdk"
    qemu_img(
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        str(esp),
        str(made["esp.vmdk"]),
    )
    data = directory / "data.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", str(data), "8M")
    made["data.vmdk"] = data
    return made


@pytest.fixture
def v2v(virtkit: Cli, state_root: Path, tiny_template: Path) -> Iterator[Cli]:
    """A state root with the tiny image; every instance left is deleted (its console printed)."""
    seed_root(tiny_template, state_root)
    yield virtkit
    for instance in json.loads(virtkit("list", "--json").stdout or "[]"):
        virtkit("delete", "--force", instance["name"], timeout=60)
        console = state_root / "instances" / instance["name"] / "console.log"
        if console.exists():
            print(f"--- console of {instance['name']} ---\n{console.read_text(errors='replace')[-3000:]}")


def import_vm(virtkit: Cli, *args: str) -> dict[str, object]:
    done = virtkit("import-vm", *args, "--json", timeout=IMPORT_TIMEOUT)
    assert done.returncode == 0, done.stderr
    document: dict[str, object] = json.loads(done.stdout)
    return document


def image_disk(state_root: Path, virtkit: Cli, name: str) -> dict[str, object]:
    """`qemu-img info` of the disk of VM `name`'s image (the imported disk under its root disk)."""
    record = state_of(virtkit, name)
    disk = state_root / "images" / str(record["image"]) / "disk.qcow2"
    info: dict[str, object] = json.loads(qemu_img("info", "--output=json", str(disk)))
    root = json.loads(
        qemu_img("info", "-U", "--output=json", str(state_root / "instances" / name / "root.qcow2"))
    )
    assert root["backing-filename"] == str(disk)
    return info


def hardware(virtkit: Cli, name: str) -> tuple[float, int, str, str]:
    record = state_of(virtkit, name)
    config = record["config"]
    assert isinstance(config, dict)
    return record["cpus"], record["memory"], config["firmware"], config["devices"]  # type: ignore[return-value]


def boot(virtkit: Cli, name: str) -> None:
    started = virtkit("start", name, timeout=60)
    assert started.returncode == 0, started.stderr
    log = wait_console(virtkit, name, "extlinux:/#")
    assert "SeaBIOS" in log and "SYSLINUX" in log
    runtime = virtkit("show", name, "--runtime").stdout
    assert "-kernel" not in runtime and "ide-hd" in runtime  # AHCI (ich9-ahci's ide-hd), not virtio
    assert virtkit("stop", "--force", name, timeout=60).returncode == 0


def test_vmware_ova_boots(v2v: Cli, state_root: Path, media: dict[str, Path], tmp_path: Path) -> None:
    disks = {
        "web-disk1.vmdk": media["stream.vmdk"].read_bytes(),
        "web-disk2.vmdk": media["data.vmdk"].read_bytes(),
    }
    text = v2vbuild.vmware_ovf([Disk(name, DISK_SIZE) for name in disks], cpus="2", memory_mib="384")
    ova = v2vbuild.ova_package(tmp_path / "web.ova", text, disks)
    shown = v2v("import-vm", str(ova), "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert (
        "Found: VMware OVA web.ova" in shown.stdout
        and "disk 2 -> volume default/web-server-disk2" in shown.stdout
    )
    assert json.loads(v2v("list", "--json").stdout) == []
    planned = import_vm(v2v, str(ova), "--dry-run", "--network", "default")["plan"]
    assert isinstance(planned, dict) and planned["nics"] == [
        {
            "source_model": "E1000",
            "source_network": "VM Network",
            "model": "e1000",
            "network": "default",
            "mac": "00:50:56:aa:bb:cc",
        }
    ]
    assert json.loads(v2v("network", "list", "--json").stdout) == []  # a plan makes no network

    document = import_vm(v2v, str(ova))
    plan = document["plan"]
    assert isinstance(plan, dict) and plan["devices"] == "emulated" and plan["name"] == "web-server"
    assert plan["convert"] is True  # tried, and this disk holds no Linux: it keeps emulated devices
    assert any(str(n).startswith("not converted (") for n in document["notes"]), document["notes"]  # type: ignore[attr-defined]
    assert hardware(v2v, "web-server") == (2.0, 384 * MiB, "bios", "emulated")
    volumes = state_of(v2v, "web-server")["volumes"]
    assert isinstance(volumes, list) and [(v["pool"], v["name"]) for v in volumes] == [
        ("default", "web-server-disk2")
    ]
    info = image_disk(state_root, v2v, "web-server")
    assert (info["format"], info["virtual-size"], info.get("backing-filename")) == ("qcow2", DISK_SIZE, None)
    boot(v2v, "web-server")


def test_xenserver_xva_boots(v2v: Cli, state_root: Path, media: dict[str, Path], tmp_path: Path) -> None:
    raw = media["raw"].read_bytes()
    zeros = [i for i in range(1, DISK_SIZE // MiB - 1) if raw[i * MiB : (i + 1) * MiB].count(0) == MiB]
    assert zeros  # some chunks are all zeros: left out of the XVA
    descriptor = v2vbuild.ova_xml("Xen Guest", 3, 320 * MiB, [DISK_SIZE])
    xva = v2vbuild.xva(tmp_path / "guest.xva", descriptor, {"Ref:10": raw}, checksum=".xxhash")
    with tarfile.open(xva) as tar:
        assert len([n for n in tar.getnames() if not n.endswith(".xxhash")]) == 1 + DISK_SIZE // MiB - len(
            zeros
        )
    document = import_vm(v2v, str(xva))
    plan = document["plan"]
    assert isinstance(plan, dict) and plan["found"]["source"] == "XenServer"  # type: ignore[index]
    assert hardware(v2v, "xen-guest") == (3.0, 320 * MiB, "bios", "emulated")
    assert image_disk(state_root, v2v, "xen-guest")["virtual-size"] == DISK_SIZE
    boot(v2v, "xen-guest")


def test_virtualbox_uefi_ova_boots(
    v2v: Cli, state_root: Path, media: dict[str, Path], tmp_path: Path
) -> None:
    disks = {"devbox-disk001.vmdk": media["esp.vmdk"].read_bytes()}
    text = v2vbuild.virtualbox_ovf([Disk("devbox-disk001.vmdk", 48 * MiB)], name="devbox", efi=True)
    ova = v2vbuild.ova_package(tmp_path / "devbox.ova", text, disks, algorithm="SHA1")
    plan = import_vm(v2v, str(ova))["plan"]
    assert isinstance(plan, dict) and plan["found"]["source"] == "VirtualBox"  # type: ignore[index]
    assert hardware(v2v, "devbox") == (1.0, 512 * MiB, "uefi", "emulated")
    assert v2v("start", "devbox", timeout=60).returncode == 0
    log = wait_console(v2v, "devbox", "systemd-boot:/#")
    assert "BdsDxe: starting Boot" in log
    assert (state_root / "instances" / "devbox" / "efivars.fd").is_file()


def test_nics_go_on_the_networks_given(lab: Lab, media: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    lab.ok("network", "create", "web", "--type", "isolated")
    disks = {"web-disk1.vmdk": media["stream.vmdk"].read_bytes()}
    ova = v2vbuild.ova_package(
        tmp_path / "web.ova", v2vbuild.vmware_ovf([Disk("web-disk1.vmdk", DISK_SIZE)]), disks
    )
    lab.ok("import-vm", str(ova), "--network", "web")
    nics = lab.show("web-server")["nics"]
    assert isinstance(nics, list)
    assert [(n["network"], n["mac"], n["model"]) for n in nics] == [("web", "00:50:56:aa:bb:cc", "e1000")]
    # The same appliance again: its MAC is the first VM's, so the second gets a new one (and says so).
    again = json.loads(lab.ok("import-vm", str(ova), "--name", "web2", "--network", "web", "--json").stdout)
    assert any("gets a new one" in note for note in again["plan"]["notes"])
    second = lab.show("web2")["nics"]
    assert isinstance(second, list) and second[0]["mac"] != "00:50:56:aa:bb:cc"
    refused = lab.virtkit("import-vm", str(ova), "--name", "web3", "--network", "nowhere")
    assert refused.returncode == 1 and "network 'nowhere' not found" in refused.stderr


def test_other_formats_are_imported(
    v2v: Cli, state_root: Path, media: dict[str, Path], tmp_path: Path
) -> None:
    # VMware Workstation: a .vmx beside its monolithicSparse VMDK.
    vm_dir = tmp_path / "Build Box"
    vm_dir.mkdir()
    os.link(media["sparse.vmdk"], vm_dir / "Build Box.vmdk")
    (vm_dir / "Build Box.vmx").write_text(v2vbuild.vmx([("scsi0:0", "Build Box.vmdk")], cpus=2, memsize=448))
    import_vm(v2v, str(vm_dir / "Build Box.vmx"))
    assert hardware(v2v, "build-box") == (2.0, 448 * MiB, "bios", "emulated")
    assert image_disk(state_root, v2v, "build-box")["virtual-size"] == DISK_SIZE
    # VirtualBox: a bare OVF (its flavour) beside its disk, with a manifest; UEFI.
    ovf_dir = tmp_path / "vbox"
    ovf_dir.mkdir()
    os.link(media["stream.vmdk"], ovf_dir / "devbox-disk001.vmdk")
    text = v2vbuild.virtualbox_ovf(
        [Disk("devbox-disk001.vmdk", DISK_SIZE)], name="devbox", cpus="2", efi=True
    )
    (ovf_dir / "devbox.ovf").write_text(text)
    (ovf_dir / "devbox.mf").write_bytes(
        v2vbuild.manifest(
            {"devbox.ovf": text.encode(), "devbox-disk001.vmdk": media["stream.vmdk"].read_bytes()}, "SHA1"
        )
    )
    import_vm(v2v, str(ovf_dir / "devbox.ovf"))
    assert hardware(v2v, "devbox") == (2.0, 512 * MiB, "uefi", "emulated")
    # VirtualBox's own .vbox with its VDI; virtio devices there stay virtio.
    vbox_dir = tmp_path / "vboxvm"
    vbox_dir.mkdir()
    os.link(media["disk.vdi"], vbox_dir / "vm.vdi")
    (vbox_dir / "vm.vbox").write_text(
        '<?xml version="1.0"?><VirtualBox xmlns="http://www.virtualbox.org/" version="1.16-linux">'
        '<Machine uuid="{m}" name="vdi-vm" OSType="Debian_64"><MediaRegistry><HardDisks>'
        '<HardDisk uuid="{d}" location="vm.vdi" format="VDI"/></HardDisks></MediaRegistry>'
        '<Hardware><CPU count="1"/><Memory RAMSize="288"/></Hardware><StorageControllers>'
        '<StorageController name="V" type="VirtioSCSI"><AttachedDevice type="HardDisk" port="0" device="0">'
        '<Image uuid="{d}"/></AttachedDevice></StorageController></StorageControllers></Machine></VirtualBox>'
    )
    import_vm(v2v, str(vbox_dir / "vm.vbox"))
    assert hardware(v2v, "vdi-vm") == (1.0, 288 * MiB, "bios", "virtio")
    # Bare disks (Hyper-V's VHDX, Xen's or Virtual PC's VHD, a lone VDI): hardware from the options.
    for file, name in (("disk.vhdx", "hyperv"), ("disk.vhd", "xenvhd"), ("disk.vdi", "lonevdi")):
        document = import_vm(v2v, str(media[file]), "--name", name, "--cpus", "2", "--memory", "320MiB")
        assert document["plan"]["found"]["format"] == "disk"  # type: ignore[index]
        assert hardware(v2v, name) == (2.0, 320 * MiB, "bios", "emulated")
        size = image_disk(state_root, v2v, name)["virtual-size"]
        assert isinstance(size, int) and DISK_SIZE <= size < DISK_SIZE + MiB  # a VHD's is rounded to CHS
    boot(v2v, "build-box")


def tree(root: Path) -> list[str]:
    """Every path under the state root but the database's files and the lock files (which stay)."""
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if not path.name.startswith("virtkit.db") and "locks" not in path.parts
    )


def test_hostile_appliances_leave_nothing(
    v2v: Cli, state_root: Path, media: dict[str, Path], tmp_path: Path
) -> None:
    vmdk = media["stream.vmdk"].read_bytes()
    good = v2vbuild.vmware_ovf([Disk("d.vmdk", DISK_SIZE)])
    cases: list[tuple[str, Path, int, str]] = []

    def ovf(name: str, text: str | bytes, code: int, needle: str, disk: bool = True) -> None:
        directory = tmp_path / name
        directory.mkdir()
        if disk:
            os.link(media["stream.vmdk"], directory / "d.vmdk")
        (directory / f"{name}.ovf").write_bytes(text.encode() if isinstance(text, str) else text)
        cases.append((name, directory / f"{name}.ovf", code, needle))

    ovf(
        "xxe",
        b'<?xml version="1.0"?><!DOCTYPE E [<!ENTITY x SYSTEM "file:///etc/passwd">]><Envelope>&x;</Envelope>',
        1,
        "DTD or entities",
    )
    ovf(
        "laughs",
        b'<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><Envelope>&b;'
        b"</Envelope>",
        1,
        "DTD or entities",
    )
    ovf("petabyte", v2vbuild.vmware_ovf([Disk("d.vmdk", DISK_SIZE)], memory_mib=str(1024**3)), 2, "of memory")
    ovf("billion-cpus", v2vbuild.vmware_ovf([Disk("d.vmdk", DISK_SIZE)], cpus=str(10**9)), 2, "CPUs")
    many = "".join(f'<File ovf:href="d{i}" ovf:id="f{i}"/>' for i in range(10_000))
    disks = "".join(f'<Disk ovf:diskId="k{i}" ovf:fileRef="f{i}"/>' for i in range(10_000))
    drives = "".join(
        f"<Item><rasd:HostResource>/disk/k{i}</rasd:HostResource><rasd:ResourceType>17"
        "</rasd:ResourceType></Item>"
        for i in range(10_000)
    )
    ovf(
        "many-disks",
        f"<Envelope {v2vbuild.OVF_NS}><References>{many}</References><DiskSection>{disks}"
        f"</DiskSection><VirtualSystem><VirtualHardwareSection>{drives}</VirtualHardwareSection>"
        "</VirtualSystem></Envelope>",
        2,
        "10000 disks",
    )
    ovf("dotdot", good.replace('"d.vmdk"', '"../d.vmdk"'), 1, "outside the package")
    ovf("absolute", good.replace('"d.vmdk"', '"/etc/shadow"'), 1, "absolute path")
    ovf("missing", good, 1, "not there", disk=False)

    def archive(name: str, members: list[tuple[str, bytes]], code: int, needle: str) -> Path:
        path = v2vbuild.ova(tmp_path / name, members)
        cases.append((name, path, code, needle))
        return path

    archive(
        "badsum.ova",
        [("m.ovf", good.encode()), ("m.mf", v2vbuild.manifest({"d.vmdk": b"not it"})), ("d.vmdk", vmdk)],
        1,
        "digest of 'd.vmdk'",
    )
    backing = tmp_path / "backing.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(backing))
    two = v2vbuild.vmware_ovf([Disk("d.vmdk", DISK_SIZE), Disk("e.vmdk", DISK_SIZE)])
    archive(
        "second-disk.ova",
        [("m.ovf", two.encode()), ("d.vmdk", vmdk), ("e.vmdk", backing.read_bytes())],
        1,
        "is not a VMDK image",
    )
    whole = archive("whole.ova", [("m.ovf", good.encode()), ("d.vmdk", vmdk)], 0, "")
    cases.pop()
    truncated = tmp_path / "truncated.ova"
    truncated.write_bytes(whole.read_bytes()[: len(vmdk) // 2])
    cases.append(("truncated.ova", truncated, 1, "truncated"))
    link = tmp_path / "link.ova"
    with tarfile.open(link, "w", format=tarfile.USTAR_FORMAT) as tar:
        v2vbuild.add(tar, "m.ovf", good.encode())
        info = tarfile.TarInfo("d.vmdk")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(info)
    cases.append(("link.ova", link, 1, "symbolic link"))
    raw = media["raw"].read_bytes()
    descriptor = v2vbuild.ova_xml("x", 1, 256 * MiB, [DISK_SIZE])
    xva = v2vbuild.xva(tmp_path / "good.xva", descriptor, {"Ref:10": raw})
    with tarfile.open(xva) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    flipped = [(n, d if n != "Ref:10/00000000" else b"\x01" + d[1:]) for n, d in members]
    archive("badchunk.xva", flipped, 1, "SHA-1 of chunk Ref:10/00000000")
    short = tmp_path / "short.xva"
    short.write_bytes(xva.read_bytes()[: xva.stat().st_size - 2 * MiB])
    cases.append(("short.xva", short, 1, "truncated"))
    device = tmp_path / "device.xva"
    with tarfile.open(device, "w", format=tarfile.USTAR_FORMAT) as tar:
        v2vbuild.add(tar, "ova.xml", descriptor)
        info = tarfile.TarInfo("Ref:10/00000000")
        info.type, info.devmajor, info.devminor = tarfile.BLKTYPE, 8, 0
        tar.addfile(info)
    cases.append(("device.xva", device, 1, "device node"))

    before = tree(state_root)
    images = v2v("image", "list", "--json").stdout
    for name, path, code, needle in cases:
        result = v2v("import-vm", str(path), "--json", timeout=IMPORT_TIMEOUT)  # no plan, no progress
        assert_clear_error(result, code, needle)
        assert tree(state_root) == before, name
        assert v2v("image", "list", "--json").stdout == images, name
        assert json.loads(v2v("list", "--json").stdout) == [], name
