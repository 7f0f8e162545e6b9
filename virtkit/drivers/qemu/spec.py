"""Everything a QEMU command line needs, as one frozen value: the VM driver's runtime description.

`QemuDriver.generate` fills a `VmSpec` from an instance record and its image; `argv.build_argv`
turns it into the command line with no other input. The spec is saved (as `to_dict`) in the
runtime beside the instance, so a later virtkit process finds the VM's sockets, files and
readiness signal without the image logic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Accel = Literal["kvm", "tcg"]
Machine = Literal["microvm", "q35", "virt"]
Devices = Literal["virtio", "emulated"]
Firmware = Literal["bios", "uefi"]
DiskBus = Literal["virtio", "ahci", "ide"]
DiskFormat = Literal["qcow2", "raw"]

ACCELS: tuple[Accel, ...] = ("kvm", "tcg")
MACHINES: tuple[Machine, ...] = ("microvm", "q35", "virt")
DEVICES: tuple[Devices, ...] = ("virtio", "emulated")
FIRMWARES: tuple[Firmware, ...] = ("bios", "uefi")
MAX_PCIE_PORTS = 24  # three multifunction slots of q35's pcie.0 (argv._root_ports)
MAX_VOLUME_PORTS = 32  # four more slots of pcie.0, for volumes (volumes.root_ports)
VolumeBus = Literal["virtio", "ahci"]


@dataclass(frozen=True)
class DiskSpec:
    """One disk: its file, its format (always explicit: QEMU never probes), the bus it sits on."""

    path: str
    format: DiskFormat = "qcow2"
    bus: DiskBus = "virtio"
    readonly: bool = False
    # I/O throttling (a QEMU throttle group per writable disk, so limits can change while it runs).
    iops: int | None = None  # operations per second, reads and writes together
    bps: int | None = None  # bytes per second, reads and writes together

    def __post_init__(self) -> None:
        if self.readonly and self.bus != "virtio":
            # QEMU's ide-hd refuses read-only block nodes: only virtio-blk (and CD-ROMs) can be.
            raise ValueError(f"a read-only disk needs the virtio bus, not {self.bus}")


NicModel = Literal["virtio", "e1000"]


@dataclass(frozen=True)
class NicSpec:
    """One NIC: a tap on the host (made by `start`, enslaved to `bridge`) and the guest's device."""

    device: str  # the tap's name on the host
    mac: str
    bridge: str
    model: NicModel = "virtio"
    # The NIC's number in the instance (its eth<index>); on q35 it sits on root port rp<index>.
    # None in runtimes saved before hot-plug: those NICs sit on pcie.0 in their order.
    index: int | None = None


@dataclass(frozen=True)
class VolumeSpec:
    """A block volume of a storage pool attached to the VM (see volumes.py): a qcow2 file virtkit
    opens and hands QEMU as a descriptor, a virtio disk (a SATA disk with emulated devices)."""

    device: str  # its slot in the instance: vol0, vol1, ... (QEMU's ids are made of it)
    pool: str
    name: str
    path: str  # the qcow2 file in its pool
    bus: VolumeBus = "virtio"
    # QEMU throttle-group limits (QAPI ThrottleLimits names: iops-read, bps-total, ...); none: unthrottled
    limits: tuple[tuple[str, int], ...] = ()

    @property
    def index(self) -> int:
        return int(self.device[len("vol") :])


@dataclass(frozen=True)
class UefiSpec:
    """The UEFI firmware: read-only code and the instance's own copy of the variable store."""

    code: str
    vars: str


@dataclass(frozen=True)
class VmSpec:
    """One VM as QEMU will run it. Sizes in bytes; paths absolute."""

    name: str
    uuid: str
    arch: str
    accel: Accel
    machine: Machine
    cpus: int
    memory: int
    pidfile: str
    qmp_socket: str
    console_socket: str  # unix socket chardev: `virtkit console` attaches here
    console_log: str  # everything the serial console printed, kept whether or not anyone attached
    devices: Devices = "virtio"
    cpu_model: str = "max"
    # Direct kernel boot (kernel set) or firmware boot (firmware set); never both.
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    firmware: Firmware | None = None
    uefi: UefiSpec | None = None
    disks: tuple[DiskSpec, ...] = ()
    iso: str | None = None
    # Guest channels on virtio-serial ports (absent with emulated devices).
    ready_file: str | None = None  # file chardev the guest writes its readiness marker to
    ready_port: str = "org.virtkit.ready"
    agent_socket: str | None = None  # unix socket chardev of the in-guest command agent
    agent_port: str = "org.virtkit.agent"
    ready_marker: str | None = None  # what the guest prints when ready (on the port and the console)
    tsc_khz: int | None = None  # microvm under TCG: tell the guest its TSC rate (tsc_early_khz=)
    ready_agent: bool = False  # ready once the agent on agent_socket (qemu-guest-agent) answers a sync
    seed: str | None = None  # cloud-init's NoCloud seed (ISO9660 labelled cidata), attached read-only
    nics: tuple[NicSpec, ...] = ()
    # q35: empty-or-NIC PCIe root ports rp0.. (NIC hot-plug needs one: see argv._root_ports).
    # 0 for the other machines and for runtimes saved before hot-plug existed.
    pcie_ports: int = 0
    volumes: tuple[VolumeSpec, ...] = ()
    # q35 with virtio devices: root ports rpv0.. for volumes, volume N on rpvN (volumes.root_ports).
    volume_ports: int = 0
    # Host-side confinement, applied by `start` around the argv (not part of it).
    run_as: str | None = None  # the unprivileged user QEMU becomes (None: root)
    cgroup: str | None = None  # the VM's cgroup, relative to each hierarchy's root
    cpu_quota: int | None = None  # microseconds of host CPU time per period
    cpu_period: int = 100_000
    memory_max: int | None = None  # ceiling on everything QEMU uses: guest RAM and QEMU's own

    def __post_init__(self) -> None:
        if not 0 <= self.pcie_ports <= MAX_PCIE_PORTS or (self.pcie_ports and self.machine != "q35"):
            raise ValueError(f"invalid pcie_ports {self.pcie_ports}: 0 to {MAX_PCIE_PORTS}, on q35 only")
        if not 0 <= self.volume_ports <= MAX_VOLUME_PORTS or (self.volume_ports and self.machine != "q35"):
            raise ValueError(f"invalid volume_ports {self.volume_ports}: 0 to {MAX_VOLUME_PORTS}, q35 only")

    @property
    def binary(self) -> str:
        return f"qemu-system-{self.arch}"

    @property
    def mmio(self) -> bool:
        """Whether virtio devices sit on virtio-mmio (microvm, arm's virt) rather than PCI."""
        return self.machine in ("microvm", "virt")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["disks"] = [asdict(disk) for disk in self.disks]
        data["nics"] = [asdict(nic) for nic in self.nics]
        data["volumes"] = [{**asdict(vol), "limits": dict(vol.limits)} for vol in self.volumes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VmSpec:
        values = dict(data)
        values["disks"] = tuple(DiskSpec(**disk) for disk in values.get("disks", ()))
        values["nics"] = tuple(NicSpec(**nic) for nic in values.get("nics", ()))
        values["volumes"] = tuple(
            VolumeSpec(**{**vol, "limits": tuple(dict(vol.get("limits", {})).items())})
            for vol in values.get("volumes", ())
        )
        uefi = values.get("uefi")
        values["uefi"] = UefiSpec(**uefi) if uefi else None
        return cls(**values)
