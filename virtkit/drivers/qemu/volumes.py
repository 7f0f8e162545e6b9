"""A VM's block volumes as QEMU has them: one pure description serving both a start's command line
(argv.py) and a hot-plug into the running VM (volumeplug.py), so the two can never differ.

For volume slot `vol0` (`VolumeSpec.device`), bottom up:

    fd set      the qcow2 file, opened by virtkit (never by QEMU: its user need not reach the pool)
                and handed over as a descriptor: `-add-fd fd=N,set=S` at start (`with_volume_fds`),
                `add-fd` with SCM_RIGHTS when hot-plugged; QEMU opens /dev/fdset/S, which dups it
    vk-vol0-file   driver=file on /dev/fdset/S
    vk-vol0        driver=qcow2 (the format explicit, `backing: null`: no backing file is ever
                   opened, whatever the image's header says) ...
    vk-vol0        ... or, when the volume has IO limits, a throttle filter over the qcow2 node
                   (then vk-vol0-qcow2) in throttle group vk-vol0-tg (`-object throttle-group`)
    device vk-vol0 virtio-blk-pci on q35, on root port rpvN of its number (`root_ports`);
                   virtio-blk-device on virtio-mmio (microvm, arm's virt); ide-hd on q35's AHCI with
                   emulated devices. Its serial is the volume's name, so the guest finds it as
                   /dev/disk/by-id/virtio-NAME (virtio and ATA serials hold 20 characters).

Objects, nodes and devices are written in QEMU's JSON option syntax (QEMU 6.2+ takes it for
-object, -blockdev and -device): the very dictionaries QMP takes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from virtkit.drivers.qemu.spec import MAX_PCIE_PORTS, Devices, Machine, VmSpec, VolumeSpec
from virtkit.errors import SpecError
from virtkit.model import VolumeAttachment, VolumeType

SERIAL_MAX = 20  # VIRTIO_BLK_ID_BYTES, and an ATA serial's length
# q35: volume N sits on root port rpvN (as NIC N on rpN). Four ports from the start, so four volumes
# can be hot-plugged; more at start when a stopped VM was given more.
HOTPLUG_VOLUME_PORTS = 4
VOLUME_PORT_SLOT = 0x1B  # pcie.0 slots from here down, 8 ports each (NICs' ports: 0x1c and up)
PORTS_PER_SLOT = 8
AHCI_PORTS = 6  # q35's ICH9 AHCI controller
MMIO_TRANSPORTS: dict[str, int] = {"microvm": 24, "virt": 32}  # QEMU 7.2's virtio-mmio slots


def node_id(vol: VolumeSpec) -> str:
    """The top block node's name, which is also the device's id and the fd set's opaque tag."""
    return f"vk-{vol.device}"


def qcow2_id(vol: VolumeSpec) -> str:
    return f"{node_id(vol)}-qcow2" if vol.limits else node_id(vol)


def file_id(vol: VolumeSpec) -> str:
    return f"{node_id(vol)}-file"


def group_id(vol: VolumeSpec) -> str:
    return f"{node_id(vol)}-tg"


def node_names(vol: VolumeSpec) -> list[str]:
    """Every block node a volume may have, top first (the order they are deleted in)."""
    return [node_id(vol), f"{node_id(vol)}-qcow2", file_id(vol)]


def fdset_of(vol: VolumeSpec) -> int:
    """The fd set a start passes the volume in (a hot-plug lets QEMU choose a free one)."""
    return vol.index


def serial(vol: VolumeSpec) -> str:
    return vol.name[:SERIAL_MAX]


def throttle_group(vol: VolumeSpec) -> dict[str, object] | None:
    """The throttle-group object of the volume's limits (None: it has none)."""
    if not vol.limits:
        return None
    return {"qom-type": "throttle-group", "id": group_id(vol), "limits": dict(vol.limits)}


def block_nodes(vol: VolumeSpec, filename: str) -> list[dict[str, object]]:
    """The volume's block nodes on `filename`, bottom up (the order they are added in)."""
    nodes: list[dict[str, object]] = [
        {"driver": "file", "node-name": file_id(vol), "filename": filename},
        {"driver": "qcow2", "node-name": qcow2_id(vol), "file": file_id(vol), "backing": None},
    ]
    if vol.limits:
        nodes.append({"driver": "throttle", "node-name": node_id(vol), "throttle-group": group_id(vol),
                      "file": qcow2_id(vol)})  # fmt: skip
    return nodes


def root_port(index: int) -> str:
    return f"rpv{index}"


def volume_port(spec: VmSpec, vol: VolumeSpec) -> str | None:
    """The root port `vol` sits on (None: it has none, off q35 or beyond the ports)."""
    return root_port(vol.index) if vol.bus == "virtio" and vol.index < spec.volume_ports else None


def device(spec: VmSpec, vol: VolumeSpec, ahci_port: int | None = None) -> dict[str, object]:
    """The guest's disk: on a root port (q35; `addr` 0, the port's one slot), on virtio-mmio, or
    on AHCI port `ahci_port`."""
    common = {"id": node_id(vol), "drive": node_id(vol), "serial": serial(vol)}
    if vol.bus == "ahci":
        return {"driver": "ide-hd", **common, "bus": f"ide.{ahci_port}"}
    if spec.mmio:
        return {"driver": "virtio-blk-device", **common}
    port = volume_port(spec, vol)
    return {"driver": "virtio-blk-pci", **common, **({"bus": port, "addr": "0"} if port else {})}


def first_ahci_port(spec: VmSpec) -> int:
    """The first AHCI port after the disks, the install ISO and the seed (argv._cdrom, _seed)."""
    seed = spec.seed is not None and spec.devices != "virtio"
    return sum(1 for disk in spec.disks if disk.bus == "ahci") + (spec.iso is not None) + seed


def root_ports(spec: VmSpec) -> list[str]:
    """q35's root ports for volumes, rpv0, rpv1, ... (empty until a volume comes): packed 8 to a
    multifunction slot from 0x1b down, their chassis and port numbers after the NICs' ports. They
    reserve no I/O window (io-reserve=0: a virtio disk on PCIe needs none), so SeaBIOS's 64 KiB
    of I/O ports stays for the NICs' ports."""
    args: list[str] = []
    for index in range(spec.volume_ports):
        slot, function = divmod(index, PORTS_PER_SLOT)
        multi = ",multifunction=on" if function == 0 else ""
        number = MAX_PCIE_PORTS + index
        args += ["-device", f"pcie-root-port,id={root_port(index)},bus=pcie.0,chassis={number + 1},"
                            f"port={0x10 + number:#x},addr={VOLUME_PORT_SLOT - slot:#x}.{function}{multi},"
                            "io-reserve=0"]  # fmt: skip
    return args


def _json(value: Mapping[str, object]) -> str:
    return json.dumps(value, separators=(",", ":"))


def volume_args(spec: VmSpec) -> list[str]:
    """The command line's volumes, last of all (the root disk stays the guest's first disk)."""
    args = root_ports(spec)
    ahci = first_ahci_port(spec)
    for vol in spec.volumes:
        group = throttle_group(vol)
        if group is not None:
            args += ["-object", _json(group)]
        for node in block_nodes(vol, vol.path):
            args += ["-blockdev", _json(node)]
        args += ["-device", _json(device(spec, vol, ahci))]
        ahci += vol.bus == "ahci"
    return args


def with_volume_fds(argv: Sequence[str], spec: VmSpec, fds: Mapping[str, int]) -> list[str]:
    """`argv` with each volume's file node on the open descriptor `fds[device]` (in its fd set, given
    by an `-add-fd` just before it) instead of its path (what the saved argv shows people)."""
    sets = {file_id(vol): vol for vol in spec.volumes if vol.device in fds}
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "-blockdev" and arg.startswith("{"):
            node = json.loads(arg)
            vol = sets.get(node.get("node-name"))
            if vol is not None and node.get("driver") == "file":
                out[-1:] = ["-add-fd", f"fd={fds[vol.device]},set={fdset_of(vol)},opaque={node_id(vol)}",
                            "-blockdev"]  # fmt: skip
                arg = _json({**node, "filename": f"/dev/fdset/{fdset_of(vol)}"})
        out.append(arg)
    return out


# --- planning: from the instance record -----------------------------------------------------


def volume_spec(attachment: VolumeAttachment, devices: Devices) -> VolumeSpec:
    """How the VM has `attachment`: a virtio disk, or a SATA one with emulated devices."""
    from virtkit.storage.limits import throttle_limits

    if attachment.type is not VolumeType.BLOCK or attachment.format != "qcow2":
        raise SpecError(
            f"volume {attachment.name!r} of pool {attachment.pool!r} is a {attachment.type.value} volume: "
            "a VM takes block volumes (qcow2 disks; no virtiofs yet)",
            hint=f"detach it: virtkit volume detach {attachment.pool} {attachment.name} INSTANCE",
        )
    return VolumeSpec(
        device=attachment.device, pool=attachment.pool, name=attachment.name, path=attachment.source,
        bus="virtio" if devices == "virtio" else "ahci",
        limits=tuple(throttle_limits(attachment.limits).items()),
    )  # fmt: skip


def volume_ports(machine: Machine, devices: Devices, volumes: tuple[VolumeSpec, ...]) -> int:
    """q35 with virtio: HOTPLUG_VOLUME_PORTS, and one more for each volume numbered beyond them."""
    if machine != "q35" or devices != "virtio":
        return 0
    return max([HOTPLUG_VOLUME_PORTS, *(vol.index + 1 for vol in volumes)])


def check_room(spec: VmSpec) -> None:
    """SpecError when the machine has no room for all the VM's volumes (QEMU would refuse to start)."""
    if not spec.volumes:
        return
    if spec.devices != "virtio" and spec.machine != "q35":
        raise SpecError(
            f"{spec.name} has emulated devices on the {spec.machine} machine: its volumes would be SATA "
            "disks, which virtkit gives on q35 only",
            hint="use virtio devices, or --machine q35",
        )
    if spec.mmio:
        used = _mmio_devices(spec)
        if used > MMIO_TRANSPORTS[spec.machine]:
            raise SpecError(
                f"{spec.name} would have {used} virtio devices, and the {spec.machine} machine has "
                f"{MMIO_TRANSPORTS[spec.machine]} virtio-mmio slots",
                hint="detach a volume or a NIC, or use --machine q35",
            )
    ahci = first_ahci_port(spec) + sum(vol.bus == "ahci" for vol in spec.volumes)
    if ahci > AHCI_PORTS:
        raise SpecError(
            f"{spec.name} would have {ahci} SATA disks (emulated devices), and its AHCI controller "
            f"has {AHCI_PORTS} ports",
            hint="detach a volume, or use virtio devices",
        )


def _mmio_devices(spec: VmSpec) -> int:
    virtio = spec.devices == "virtio"
    disks = sum(disk.bus == "virtio" for disk in spec.disks) + (virtio and spec.seed is not None)
    channels = virtio and (spec.ready_file is not None or spec.agent_socket is not None)
    return disks + channels + 2 * virtio + len(spec.nics) + len(spec.volumes)  # 2: rng and balloon
