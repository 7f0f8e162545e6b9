"""Block volumes as QEMU gets them (volumes.py, pure): from an instance's attachments to the spec
(plan), the descriptors a start hands over in place of paths, the root ports they sit on, the room
each machine has, and one description for a start and a hot-plug. The command lines themselves:
the *-volumes golden files of test_argv.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.drivers.qemu.test_argv import DATA, LOGS, SPECS, _base
from virtkit.drivers.qemu import volumes
from virtkit.drivers.qemu.argv import build_argv
from virtkit.drivers.qemu.spec import NicSpec, VmSpec, VolumeSpec
from virtkit.errors import SpecError
from virtkit.model import VolumeAttachment, VolumeType

ATTACHED = VolumeAttachment(
    pool="fast", name="data", type=VolumeType.BLOCK, format="qcow2", source="/srv/fast/block/data.qcow2",
    device="vol3", limits={"limits.read_iops": "500", "limits.write_bps": "52428800"},
)  # fmt: skip


def _args(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def test_an_attachment_becomes_a_virtio_disk_or_a_sata_one() -> None:
    vol = volumes.volume_spec(ATTACHED, "virtio")
    assert vol == VolumeSpec("vol3", "fast", "data", "/srv/fast/block/data.qcow2", "virtio",
                             (("iops-read", 500), ("bps-write", 52428800)))  # fmt: skip
    assert vol.index == 3 and volumes.volume_spec(ATTACHED, "emulated").bus == "ahci"
    unlimited = volumes.volume_spec(ATTACHED.model_copy(update={"limits": {}}), "virtio")
    assert volumes.throttle_group(unlimited) is None
    assert [n["node-name"] for n in volumes.block_nodes(unlimited, "/f")] == ["vk-vol3-file", "vk-vol3"]


def test_a_filesystem_volume_is_refused_for_a_vm() -> None:
    directory = ATTACHED.model_copy(update={"type": VolumeType.FILESYSTEM, "format": "dir", "path": "/mnt"})
    with pytest.raises(SpecError, match=r"filesystem volume: a VM takes block volumes .*no virtiofs") as err:
        volumes.volume_spec(directory, "virtio")
    assert err.value.hint == "detach it: virtkit volume detach fast data INSTANCE"


def test_the_start_hands_descriptors_in_place_of_paths() -> None:
    spec = SPECS["q35-virtio-volumes"]
    argv = build_argv(spec)
    passed = volumes.with_volume_fds(argv, spec, {"vol0": 11, "vol2": 12})
    assert len(passed) == len(argv) + 4  # an -add-fd before each file node, nothing else changed
    added = _args(passed, "-add-fd")
    assert added == ["fd=11,set=0,opaque=vk-vol0", "fd=12,set=2,opaque=vk-vol2"]
    files = [json.loads(b) for b in _args(passed, "-blockdev") if b.startswith('{"driver":"file"')]
    assert [f["filename"] for f in files] == ["/dev/fdset/0", "/dev/fdset/2"]
    assert passed[passed.index("-add-fd") + 2] == "-blockdev"
    assert [a for a in passed if a not in added and "/dev/fdset/" not in a and a != "-add-fd"] == [
        a for a in argv if DATA.path not in a and LOGS.path not in a
    ]
    assert volumes.with_volume_fds(argv, spec, {}) == argv  # no descriptor: the argv as saved


def test_start_and_hot_plug_describe_a_volume_alike() -> None:
    spec = SPECS["q35-virtio-volumes"]
    argv = build_argv(spec)
    assert _args(argv, "-object")[-1] == json.dumps(volumes.throttle_group(DATA), separators=(",", ":"))
    devices = [json.loads(d) for d in _args(argv, "-device") if d.startswith("{")]
    assert devices == [volumes.device(spec, DATA), volumes.device(spec, LOGS)]
    assert devices[1] == {"driver": "virtio-blk-pci", "id": "vk-vol2", "drive": "vk-vol2",
                          "serial": "logs-of-the-web-fron", "bus": "rpv2", "addr": "0"}  # fmt: skip
    nodes = [json.loads(b) for b in _args(argv, "-blockdev") if b.startswith("{")]
    assert nodes == volumes.block_nodes(DATA, DATA.path) + volumes.block_nodes(LOGS, LOGS.path)
    assert volumes.node_names(DATA) == ["vk-vol0", "vk-vol0-qcow2", "vk-vol0-file"]


def test_volume_ports_follow_the_nics_ports_without_sharing_anything() -> None:
    far = NicSpec("vk5b0d2f7en23", "52:54:00:00:00:23", "vk-lan", index=23)
    nine = VolumeSpec("vol9", "fast", "nine", "/srv/nine.qcow2")
    spec = _base(machine="q35", pcie_ports=24, volume_ports=10, nics=(far,), volumes=(nine,))
    ports = [d for d in _args(build_argv(spec), "-device") if d.startswith("pcie-root-port,")]
    options = [dict(o.split("=", 1) for o in p.split(",")[1:] if "=" in o) for p in ports]
    assert len(ports) == 34
    for key in ("id", "chassis", "port", "addr"):
        assert len({o[key] for o in options}) == 34, key
    mine = [o for o in options if o["id"].startswith("rpv")]
    assert [o["addr"] for o in mine[7:10]] == ["0x1b.7", "0x1a.0", "0x1a.1"]
    assert all(o["io-reserve"] == "0" for o in mine)  # SeaBIOS's I/O space stays for the NICs
    assert "multifunction=on" in ports[24 + 8]
    assert volumes.device(spec, nine)["bus"] == "rpv9"


def test_q35_with_virtio_gets_volume_ports_and_one_for_each_volume_beyond() -> None:
    assert volumes.volume_ports("q35", "virtio", ()) == volumes.HOTPLUG_VOLUME_PORTS == 4
    assert volumes.volume_ports("q35", "virtio", (replace(DATA, device="vol6"),)) == 7
    assert volumes.volume_ports("q35", "emulated", (DATA,)) == 0  # SATA disks: no ports
    assert volumes.volume_ports("microvm", "virtio", (DATA,)) == 0
    assert volumes.volume_ports("virt", "virtio", (DATA,)) == 0
    with pytest.raises(ValueError, match="volume_ports"):
        _base(volume_ports=4)  # microvm has no PCI
    with pytest.raises(ValueError, match="volume_ports"):
        _base(machine="q35", volume_ports=33)


def test_specs_with_volumes_survive_their_saved_form() -> None:
    for case in ("q35-virtio-volumes", "microvm-virtio-volumes", "q35-emulated-volumes"):
        saved = json.loads(json.dumps(SPECS[case].to_dict()))
        assert VmSpec.from_dict(saved) == SPECS[case]
    assert saved["volumes"][0]["limits"] == {} and SPECS["q35-virtio-volumes"].to_dict()["volumes"][0][
        "limits"
    ] == {"iops-read": 500, "bps-write": 50 << 20}
    old = SPECS["q35-virtio-nics"].to_dict()  # a runtime saved before volumes
    del old["volumes"], old["volume_ports"]
    assert VmSpec.from_dict(old) == replace(SPECS["q35-virtio-nics"], volume_ports=0)


def _many(spec: VmSpec, count: int) -> VmSpec:
    return replace(spec, volumes=tuple(replace(DATA, device=f"vol{i}", limits=()) for i in range(count)))


def test_a_machine_without_room_for_the_volumes_is_refused() -> None:
    # microvm: 24 virtio-mmio slots; the tiny VM uses 4 (disk, serial ports, rng, balloon)
    volumes.check_room(_many(SPECS["microvm-virtio-tcg"], 20))
    with pytest.raises(SpecError, match="25 virtio devices, and the microvm machine has 24 virtio-mmio"):
        volumes.check_room(_many(SPECS["microvm-virtio-tcg"], 21))
    volumes.check_room(_many(SPECS["aarch64-virt-tcg"], 28))
    with pytest.raises(SpecError, match="virt machine has 32"):
        volumes.check_room(_many(SPECS["aarch64-virt-tcg"], 29))
    # q35's AHCI: 6 ports, the root disk and the seed take two
    sata = replace(SPECS["q35-emulated-volumes"], volumes=tuple(
        replace(DATA, device=f"vol{i}", bus="ahci") for i in range(5)))  # fmt: skip
    with pytest.raises(SpecError, match=r"7 SATA disks .* 6 ports"):
        volumes.check_room(sata)
    volumes.check_room(replace(sata, volumes=sata.volumes[:4]))
    with pytest.raises(SpecError, match="emulated devices on the virt machine"):
        volumes.check_room(replace(SPECS["aarch64-virt-tcg"], devices="emulated", volumes=sata.volumes[:1]))


def test_sata_volumes_come_after_the_disks_the_iso_and_the_seed() -> None:
    spec = SPECS["q35-emulated-volumes"]
    (device,) = [json.loads(d) for d in _args(build_argv(spec), "-device") if d.startswith("{")]
    assert device == {"driver": "ide-hd", "id": "vk-vol0", "drive": "vk-vol0", "serial": "data",
                      "bus": "ide.2"}  # fmt: skip
    assert volumes.first_ahci_port(replace(spec, seed=None, iso="/srv/x.iso")) == 2


def test_plan_gives_the_record_s_volumes_after_the_root_disk(tmp_path: Path) -> None:
    from tests.unit.drivers.qemu.test_plan import _image
    from virtkit.drivers.base import InstancePaths
    from virtkit.drivers.qemu.plan import build_spec
    from virtkit.model import InstanceKind, InstanceRecord

    def plan(**config: str) -> VmSpec:
        record = InstanceRecord(name="vm1", kind=InstanceKind.VM, config=config, volumes=[ATTACHED])
        paths = InstancePaths.of(tmp_path / "root", "vm1")
        spec, _ = build_spec(record, _image(tmp_path), tmp_path, paths, verdict=lambda: None, host="x86_64",
                             tsc_khz=lambda: 1, who=lambda: None)  # fmt: skip
        return spec

    q35 = plan(machine="q35")
    assert q35.volumes == (volumes.volume_spec(ATTACHED, "virtio"),) and q35.volume_ports == 4
    assert plan().volumes == q35.volumes and plan().volume_ports == 0  # microvm
    emulated = plan(devices="emulated")
    assert emulated.volumes[0].bus == "ahci" and emulated.volume_ports == 0
    devices = _args(build_argv(q35), "-device")
    disks = [i for i, d in enumerate(devices) if "drive=disk0" in d or '"drive":"vk-vol3"' in d]
    assert len(disks) == 2 and "disk0" in devices[disks[0]]  # the guest's first disk is its root
