"""Golden files for the QEMU command line: one combination of machine, boot path, devices and
accelerator per file under golden/, one argument per line.

After an intended change to argv.py, regenerate them with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/drivers/qemu/test_argv.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from virtkit.drivers.qemu.argv import SANDBOX, build_argv, esc, with_tap_fds
from virtkit.drivers.qemu.spec import DiskSpec, NicSpec, UefiSpec, VmSpec, VolumeSpec

GOLDEN = Path(__file__).parent / "golden"
DIR = "/var/lib/virtkit/instances/vm1"
IMAGE = "/var/lib/virtkit/images/0123abcd"
MiB = 1024 * 1024
PORTS = 8  # plan.HOTPLUG_PORTS: what every q35 VM gets
VOLUME_PORTS = 4  # volumes.HOTPLUG_VOLUME_PORTS: what every q35 VM with virtio devices gets
POOL = "/srv/fast/block"
# A volume limited on reads (operations) and writes (bytes), and one in slot vol2 (vol1 was detached).
LIMITS = (("iops-read", 500), ("bps-write", 50 * MiB))
DATA = VolumeSpec("vol0", "fast", "data", f"{POOL}/data.qcow2", limits=LIMITS)
LOGS = VolumeSpec("vol2", "default", "logs-of-the-web-frontend", "/srv/pools/default/block/logs.qcow2")
LAN = NicSpec("vk5b0d2f7en0", "52:54:00:12:34:56", "vk-lan", index=0)
DMZ = NicSpec("vk5b0d2f7en2", "52:54:00:ab:cd:ef", "vk-dmz", index=2)  # eth1 was detached


def _base(**overrides: object) -> VmSpec:
    values: dict[str, object] = dict(
        name="vm1", uuid="5b0d2f7e-3c4a-4f1e-9a53-0d6c1e2b7f10", arch="x86_64", accel="tcg",
        machine="microvm", cpus=1, memory=256 * MiB, pidfile=f"{DIR}/pid", qmp_socket=f"{DIR}/monitor.sock",
        console_socket=f"{DIR}/console.sock", console_log=f"{DIR}/console.log",
        kernel=f"{IMAGE}/vmlinux", initrd=f"{IMAGE}/initrd.img",
        cmdline="console=ttyS0 panic=-1 quiet virtkit.hostname=vm1",
        disks=(DiskSpec(f"{DIR}/root.qcow2"),),
        ready_file=f"{DIR}/ready.log", agent_socket=f"{DIR}/agent.sock", ready_marker="VIRTKIT-READY",
    )  # fmt: skip
    values.update(overrides)
    return VmSpec(**values)  # type: ignore[arg-type]


SPECS: dict[str, VmSpec] = {
    # The default for the tiny image here: direct PVH boot on microvm, virtio on MMIO, TCG.
    "microvm-virtio-tcg": _base(tsc_khz=2600000),
    # The lean KVM path: no legacy timers, the host's CPU, more vCPUs and memory.
    # A read-only raw data disk too (virtio only: QEMU's IDE disks cannot be read-only); the root
    # disk throttled to 500 IOPS and 10 MiB/s.
    "microvm-virtio-kvm": _base(
        accel="kvm",
        cpu_model="host",
        cpus=4,
        memory=2048 * MiB,
        disks=(
            DiskSpec(f"{DIR}/root.qcow2", iops=500, bps=10 * MiB),
            DiskSpec("/srv/data.raw", "raw", "virtio", readonly=True),
        ),
    ),
    # Guests without virtio drivers: q35, AHCI disk, 16550 serial, no virtio-serial/rng/balloon.
    "q35-emulated-tcg": _base(
        machine="q35",
        pcie_ports=PORTS,
        devices="emulated",
        disks=(DiskSpec(f"{DIR}/root.qcow2", bus="ahci"),),
        ready_file=None,
        agent_socket=None,
    ),
    # An install: OVMF, an empty disk, the ISO first in boot order.
    "q35-uefi-iso": _base(
        machine="q35",
        pcie_ports=PORTS,
        volume_ports=VOLUME_PORTS,
        kernel=None,
        initrd=None,
        cmdline="",
        firmware="uefi",
        uefi=UefiSpec("/usr/share/OVMF/OVMF_CODE_4M.fd", f"{DIR}/efivars.fd"),
        iso="/srv/isos/debian-12.iso",
        ready_file=None,
        agent_socket=None,
        ready_marker=None,
    ),
    # An install through SeaBIOS (no display: its screen on the serial console): the ISO first,
    # then the empty virtio disk, the readiness and agent ports of an image that has them.
    "q35-bios-iso": _base(
        machine="q35",
        pcie_ports=PORTS,
        volume_ports=VOLUME_PORTS,
        kernel=None,
        initrd=None,
        cmdline="",
        firmware="bios",
        iso="/srv/isos/debian-12.iso",
    ),
    # SeaBIOS from old-style IDE disks, a raw data disk whose path holds a comma.
    "q35-bios-ide": _base(
        machine="q35",
        pcie_ports=PORTS,
        kernel=None,
        initrd=None,
        cmdline="",
        firmware="bios",
        devices="emulated",
        disks=(DiskSpec(f"{DIR}/root.qcow2", bus="ide"), DiskSpec("/srv/data,1.raw", "raw", "ide")),
        ready_file=None,
        agent_socket=None,
        ready_marker=None,
    ),
    # NICs on q35, each on the root port of its number (a hole where a NIC was detached), the
    # other ports empty for NICs attached while it runs.
    "q35-virtio-nics": _base(machine="q35", pcie_ports=PORTS, volume_ports=VOLUME_PORTS, nics=(LAN, DMZ)),
    # An e1000 for a guest without virtio, on its root port as well.
    "q35-emulated-nics": _base(
        machine="q35",
        pcie_ports=PORTS,
        devices="emulated",
        disks=(DiskSpec(f"{DIR}/root.qcow2", bus="ahci"),),
        ready_file=None,
        agent_socket=None,
        nics=(NicSpec(LAN.device, LAN.mac, LAN.bridge, model="e1000", index=0),),
    ),
    # A runtime saved before hot-plug: no root ports, its NICs on pcie.0 in their order.
    "q35-nics-no-ports": _base(machine="q35", nics=(NicSpec(LAN.device, LAN.mac, LAN.bridge),)),
    # microvm: virtio-mmio NICs, no PCI, no ports.
    "microvm-virtio-nics": _base(tsc_khz=2600000, nics=(LAN, DMZ)),
    # A foreign architecture: arm64 on the virt machine, emulated.
    "aarch64-virt-tcg": _base(
        arch="aarch64",
        machine="virt",
        cpu_model="cortex-a57",
        kernel=f"{IMAGE}/vmlinuz",
        cmdline="console=ttyAMA0 panic=-1 quiet virtkit.hostname=vm1",
    ),
    # The Debian image: its bzImage on microvm, qemu-guest-agent's port (ready when it answers),
    # no readiness port, and the cloud-init seed as a read-only virtio disk.
    "microvm-virtio-seed": _base(
        memory=512 * MiB,
        kernel=f"{IMAGE}/vmlinuz",
        cmdline="root=LABEL=virtkit-root rw console=ttyS0",
        tsc_khz=2600000,
        ready_file=None,
        ready_marker=None,
        agent_port="org.qemu.guest_agent.0",
        ready_agent=True,
        seed=f"{DIR}/seed.iso",
    ),
    # Without virtio the seed is a CD-ROM on q35's AHCI controller, on the port after the disk.
    "q35-emulated-seed": _base(
        machine="q35",
        pcie_ports=PORTS,
        devices="emulated",
        disks=(DiskSpec(f"{DIR}/root.qcow2", bus="ahci"),),
        ready_file=None,
        agent_socket=None,
        ready_marker=None,
        seed=f"{DIR}/seed.iso",
    ),
    # Block volumes on q35, after everything else: the limited one under its throttle group, each on
    # the volume root port of its number (rpv0, rpv2), beside the NICs' ports.
    "q35-virtio-volumes": _base(
        machine="q35", pcie_ports=PORTS, volume_ports=VOLUME_PORTS, nics=(LAN,), volumes=(DATA, LOGS)
    ),
    # microvm and arm's virt: on virtio-mmio.
    "microvm-virtio-volumes": _base(tsc_khz=2600000, volumes=(DATA, LOGS)),
    "aarch64-virt-volumes": _base(
        arch="aarch64",
        machine="virt",
        cpu_model="cortex-a57",
        kernel=f"{IMAGE}/vmlinuz",
        cmdline="console=ttyAMA0 panic=-1 quiet virtkit.hostname=vm1",
        volumes=(DATA,),
    ),
    # Emulated devices: SATA disks on q35's AHCI, after the root disk and the seed CD-ROM; no volume ports.
    "q35-emulated-volumes": _base(
        machine="q35",
        pcie_ports=PORTS,
        devices="emulated",
        disks=(DiskSpec(f"{DIR}/root.qcow2", bus="ahci"),),
        ready_file=None,
        agent_socket=None,
        ready_marker=None,
        seed=f"{DIR}/seed.iso",
        volumes=(VolumeSpec("vol0", "fast", "data", f"{POOL}/data.qcow2", bus="ahci"),),
    ),
}


@pytest.mark.parametrize("case", sorted(SPECS))
def test_argv_matches_golden(case: str) -> None:
    text = "\n".join(build_argv(SPECS[case])) + "\n"
    golden = GOLDEN / f"{case}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden.name}: run with UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"argv changed for {case}; if intended, regenerate with UPDATE_GOLDEN=1"
    )


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted(SPECS)


@pytest.mark.parametrize("case", sorted(SPECS))
def test_safety_flags_and_explicit_formats(case: str) -> None:
    argv = build_argv(SPECS[case])
    assert argv[0] == f"qemu-system-{SPECS[case].arch}"
    assert {"-nodefaults", "-no-user-config"} <= set(argv)
    assert argv[argv.index("-sandbox") + 1] == SANDBOX
    assert "-daemonize" not in argv  # QEMU 7.2 dies of SIGSYS daemonizing under this sandbox
    assert "-drive" not in argv  # -blockdev only: nothing implicit
    blockdevs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-blockdev"]
    keyval = [b for b in blockdevs if not b.startswith("{")]
    # Every node that reads a file names its format; throttle filters sit on top of such nodes.
    files = [b for b in keyval if "file.filename=" in b]
    assert files and all(b.startswith(("driver=qcow2,", "driver=raw,")) for b in files)
    assert all(b.startswith("driver=throttle,") for b in keyval if b not in files)
    # Volumes (JSON): each file node under a qcow2 node that opens no backing file
    nodes = [json.loads(b) for b in blockdevs if b.startswith("{")]
    formats = {n["file"]: n for n in nodes if n["driver"] == "qcow2"}
    for node in nodes:
        assert node["driver"] in ("file", "qcow2", "throttle")
        if node["driver"] == "file":
            assert formats[node["node-name"]]["backing"] is None
    assert argv[argv.index("-uuid") + 1] == SPECS[case].uuid  # what the PID-reuse guard looks for


def test_emulated_devices_have_no_virtio() -> None:
    for case in ("q35-emulated-tcg", "q35-bios-ide"):
        assert not [arg for arg in build_argv(SPECS[case]) if "virtio" in arg]


def test_commas_in_paths_cannot_add_options() -> None:
    assert esc("/a,b/c,,d") == "/a,,b/c,,,,d"
    argv = build_argv(SPECS["q35-bios-ide"])
    assert any("file.filename=/srv/data,,1.raw" in arg for arg in argv)


def test_build_is_pure() -> None:
    spec = SPECS["microvm-virtio-tcg"]
    assert build_argv(spec) == build_argv(spec)
    assert VmSpec.from_dict(spec.to_dict()) == spec
    uefi = SPECS["q35-uefi-iso"]
    assert VmSpec.from_dict(uefi.to_dict()) == uefi


def test_read_only_disks_need_virtio() -> None:
    with pytest.raises(ValueError, match="virtio"):
        DiskSpec("/srv/data.raw", "raw", "ahci", readonly=True)


def test_memory_rounds_up_to_whole_mebibytes() -> None:
    argv = build_argv(_base(memory=256 * MiB + 1))
    assert argv[argv.index("-m") + 1] == "257M"


def test_the_seed_is_read_only_and_never_shares_a_port() -> None:
    for case in ("microvm-virtio-seed", "q35-emulated-seed"):
        argv = build_argv(SPECS[case])
        (seed,) = [arg for arg in argv if "node-name=seed0" in arg]
        assert "read-only=on" in seed and seed.startswith("driver=raw,")
        assert not [arg for arg in argv if "drive=seed0" in arg and "bootindex" in arg]
    # With emulated devices, an install ISO and AHCI disks: every AHCI port is used once.
    spec = _base(
        machine="q35",
        pcie_ports=PORTS, devices="emulated", kernel=None, initrd=None, cmdline="", firmware="bios",
        disks=(DiskSpec(f"{DIR}/root.qcow2", bus="ahci"), DiskSpec("/srv/data.raw", "raw", "ahci")),
        iso="/srv/isos/debian-12.iso", ready_file=None, agent_socket=None, ready_marker=None,
        seed=f"{DIR}/seed.iso",
    )  # fmt: skip
    buses = [part for arg in build_argv(spec) for part in arg.split(",") if part.startswith("bus=ide.")]
    assert len(buses) == 4 and len(set(buses)) == 4
    assert not [arg for arg in build_argv(spec) if arg.startswith("ahci")]  # q35 has its own controller


def _devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]


def _option(device: str, key: str) -> str | None:
    return next((o.split("=", 1)[1] for o in device.split(",") if o.startswith(f"{key}=")), None)


def test_every_q35_nic_sits_on_the_root_port_of_its_number() -> None:
    devices = _devices(build_argv(SPECS["q35-virtio-nics"]))
    ports = [d for d in devices if d.startswith("pcie-root-port,id=rp") and "id=rpv" not in d]
    assert [_option(p, "id") for p in ports] == [f"rp{i}" for i in range(PORTS)]
    # one chassis and one PCIe port number each, all packed in one multifunction slot
    assert len({_option(p, "chassis") for p in ports}) == len({_option(p, "port") for p in ports}) == PORTS
    assert [_option(p, "addr") for p in ports] == [f"0x1c.{f}" for f in range(PORTS)]
    assert "multifunction=on" in ports[0] and not any("multifunction" in p for p in ports[1:])
    nics = {_option(d, "id"): _option(d, "bus") for d in devices if d.startswith("virtio-net-pci,")}
    assert nics == {"nic-vk5b0d2f7en0": "rp0", "nic-vk5b0d2f7en2": "rp2"}


def test_ports_beyond_one_slot_go_on_to_the_next() -> None:
    far = NicSpec("vk5b0d2f7en11", "52:54:00:00:00:11", "vk-lan", index=11)
    devices = _devices(build_argv(_base(machine="q35", pcie_ports=12, nics=(far,))))
    ports = [d for d in devices if d.startswith("pcie-root-port,")]
    assert len(ports) == 12 and _option(ports[7], "addr") == "0x1c.7"
    assert _option(ports[8], "addr") == "0x1d.0" and "multifunction=on" in ports[8]
    assert _option(ports[11], "addr") == "0x1d.3"
    (nic,) = [d for d in devices if d.startswith("virtio-net-pci,")]
    assert _option(nic, "bus") == "rp11"


def test_only_q35_has_root_ports() -> None:
    for case in SPECS:
        has = any(d.startswith("pcie-root-port,") for d in _devices(build_argv(SPECS[case])))
        assert has == (SPECS[case].pcie_ports > 0), case
    with pytest.raises(ValueError, match="pcie_ports"):
        _base(pcie_ports=8)  # microvm has no PCI
    with pytest.raises(ValueError, match="pcie_ports"):
        _base(machine="q35", pcie_ports=25)  # three slots of eight at most


def test_nics_keep_their_ids_and_take_their_tap_descriptors() -> None:
    argv = build_argv(SPECS["q35-virtio-nics"])
    netdevs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-netdev"]
    assert netdevs == [
        f"tap,id=net-{nic.device},ifname={nic.device},script=no,downscript=no" for nic in (LAN, DMZ)
    ]
    passed = with_tap_fds(argv, {LAN.device: 7, DMZ.device: 9})
    opened = [passed[i + 1] for i, arg in enumerate(passed) if arg == "-netdev"]
    assert opened == [f"tap,id=net-{LAN.device},fd=7", f"tap,id=net-{DMZ.device},fd=9"]


def test_specs_with_nics_survive_their_saved_form() -> None:
    for case in ("q35-virtio-nics", "q35-emulated-nics"):
        assert VmSpec.from_dict(SPECS[case].to_dict()) == SPECS[case]
    # a runtime saved before hot-plug existed: no index, no ports
    old = SPECS["q35-nics-no-ports"].to_dict()
    del old["pcie_ports"]
    for nic in old["nics"]:
        del nic["index"]
    assert VmSpec.from_dict(old) == SPECS["q35-nics-no-ports"]
