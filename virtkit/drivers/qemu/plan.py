"""From an instance record and its image to a `VmSpec`: every choice the VM driver makes, in one place.

Acceleration (KVM only when this boot's functional probe said guests run; TCG otherwise, said
plainly), machine (microvm for direct kernel boot with virtio devices on x86, q35 for firmware boot
or emulated devices, virt on aarch64), boot path (kernel + initrd, or SeaBIOS/OVMF from the disk or
an ISO), devices (virtio or emulated) and where the instance's files live.

Instance settings read from `record.config` (all optional)::

    accel     auto | kvm | tcg        (auto: KVM when proven to work here, else TCG)
    devices   virtio | emulated       (emulated: AHCI disk, 16550 serial, no virtio at all)
    firmware  bios | uefi             (boot the disk through firmware instead of the image's kernel)
    iso       PATH                    (attach install media and boot from it first)
    machine   microvm | q35 | virt    (override the machine chosen above)
    disk_size SIZE                    (grow the root disk; read by `prepare`)
    user_data, ssh_keys               (what the user gave cloud-init, kept by ops: see virtkit.cloudinit)

The instance's block volumes (`record.volumes`) become its disks after the root disk (volumes.py).
An image whose `cloud_init` property is "nocloud" gets a NoCloud seed (seed.py) made by `prepare`;
one whose agent is qemu-guest-agent is ready when that agent answers (boot.py).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from virtkit.cloudinit import wants_cloud_init
from virtkit.drivers.base import InstancePaths
from virtkit.drivers.qemu.agent import QGA_PORT
from virtkit.drivers.qemu.limits import confine
from virtkit.drivers.qemu.runas import RunAs
from virtkit.drivers.qemu.runas import lookup as lookup_user
from virtkit.drivers.qemu.spec import (
    ACCELS,
    DEVICES,
    FIRMWARES,
    MACHINES,
    Accel,
    Devices,
    DiskSpec,
    Firmware,
    Machine,
    NicModel,
    NicSpec,
    UefiSpec,
    VmSpec,
)
from virtkit.drivers.qemu.volumes import check_room, volume_ports, volume_spec
from virtkit.errors import HostCapabilityError, SpecError
from virtkit.host.cpuinfo import host_arch
from virtkit.images.iso import check_boot_media
from virtkit.images.staged import DISK, INITRD, ISO, KERNEL
from virtkit.images.tinyinit import AGENT_PORT, READY_PORT
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, Nic

log = logging.getLogger(__name__)

ARCHES = ("x86_64", "aarch64")
MACHINES_OF: dict[str, tuple[Machine, ...]] = {"x86_64": ("q35", "microvm"), "aarch64": ("virt",)}
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
# (firmware code, variable store template, package) per architecture.
UEFI_FILES = {
    "x86_64": ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf"),
    "aarch64": ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd", "qemu-efi-aarch64"),
}
TCG_NOTICE = "KVM cannot run guests here: running under TCG (emulation)"
# q35 VMs have root ports rp0..rp7 from the start, empty until a NIC of that number comes (see
# argv._root_ports), so NICs eth0-eth7 can be attached and detached while the VM runs. Eight: a NIC
# or two at launch and several more live, while SeaBIOS's 4 KiB I/O window per port (which an
# e1000 needs) still fits the 64 KiB port space beside the machine's own devices.
HOTPLUG_PORTS = 8
UNPROVEN_NOTICE = "KVM is not proven to work here (no functional probe this boot; see `virtkit host check`)"


@dataclass(frozen=True)
class VmFiles:
    """The VM driver's files in the instance directory, beside those every driver has."""

    paths: InstancePaths

    @property
    def disk(self) -> Path:
        return self.paths.dir / "root.qcow2"

    @property
    def console_socket(self) -> Path:
        return self.paths.dir / "console.sock"

    @property
    def ready(self) -> Path:
        return self.paths.dir / "ready.log"

    @property
    def agent_socket(self) -> Path:
        return self.paths.dir / "agent.sock"

    @property
    def uefi_vars(self) -> Path:
        return self.paths.dir / "efivars.fd"

    @property
    def seed(self) -> Path:
        """cloud-init's NoCloud seed volume (seed.py)."""
        return self.paths.dir / "seed.iso"

    @property
    def boot(self) -> Path:
        """What `start` recorded for `wait_ready`, `status` and `exec` (see boot.py)."""
        return self.paths.dir / "boot.json"


def kvm_verdict() -> bool | None:
    """This boot's functional KVM probe verdict: True (guests run), False (they cannot), None (unknown)."""
    try:
        from virtkit.drivers.qemu.probe import kvm_works
    except ImportError:
        return None
    return kvm_works()


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host's TSC rate, which a TCG guest sees as its own (from /proc/cpuinfo's "cpu MHz").

    A microvm guest under TCG has no HPET or PM timer to calibrate its TSC against; when PIT
    calibration fails on a busy host it hangs, unless told the rate with tsc_early_khz=.
    """
    try:
        match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(float(match.group(1)) * 1000) if match else None


def _shown(image: ImageRecord) -> str:
    """An image as the user named it: its first alias, else its name."""
    return image.aliases[0] if image.aliases else image.name


def _choice(record: InstanceRecord, key: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    value = record.config.get(key, default)
    if value is not None and value not in allowed:
        raise SpecError(f"invalid {key} {value!r}: expected one of {', '.join(allowed)}")
    return value


def resolve_accel(
    record: InstanceRecord, verdict: Callable[[], bool | None] | None = None, host: str | None = None
) -> tuple[Accel, list[str]]:
    """The accelerator to run with, and what to tell the user about it."""
    requested = _choice(record, "accel", ("auto", *ACCELS), "auto")
    host = host or host_arch()
    if record.arch != host:
        if requested == "kvm":
            raise HostCapabilityError(
                f"KVM cannot run {record.arch} guests on this {host} host",
                hint="use --accel tcg (or auto) to emulate it",
            )
        return "tcg", [f"{record.arch} guest on this {host} host: emulated (TCG)"]
    if requested == "tcg":
        return "tcg", []
    works = (verdict or kvm_verdict)()
    if requested == "kvm":
        if works is False:
            raise HostCapabilityError(
                "KVM cannot run guests on this host (its functional probe failed)",
                hint="use --accel tcg (or auto), or see `virtkit host check`",
            )
        return "kvm", [] if works else [UNPROVEN_NOTICE]
    if works:
        return "kvm", []
    return "tcg", [TCG_NOTICE if works is False else f"{UNPROVEN_NOTICE}: running under TCG (emulation)"]


def _machine(record: InstanceRecord, direct: bool, devices: Devices) -> Machine:
    allowed = MACHINES_OF[record.arch]
    asked = record.config.get("machine")
    if asked in MACHINES and asked not in allowed:
        raise SpecError(
            f"the {asked} machine cannot run {record.arch} guests: {record.arch} VMs run on "
            f"{' or '.join(allowed)}",
            hint="drop --machine to get the default",
        )
    if record.arch == "aarch64":
        chosen = _choice(record, "machine", allowed, "virt")
    else:
        default = "microvm" if direct and devices == "virtio" else "q35"
        chosen = _choice(record, "machine", allowed, default)
    if chosen == "microvm" and not (direct and devices == "virtio"):
        raise SpecError(
            "the microvm machine boots a kernel directly with virtio devices only",
            hint="use --machine q35 for firmware boot, ISOs or emulated devices",
        )
    return cast(Machine, chosen)


def _kernel(image: ImageRecord, image_dir: Path) -> str:
    """The uncompressed PVH ELF when the image has one (no decompression: much faster under TCG)."""
    vmlinux = image.properties.get("vmlinux")
    if vmlinux and (image_dir / vmlinux).is_file():
        return str(image_dir / vmlinux)
    return str(image_dir / image.files[KERNEL])


def iso_for(record: InstanceRecord, image: ImageRecord, image_dir: Path) -> str | None:
    """The install media to boot first: the `iso` setting (a file used in place, checked to be
    bootable ISO 9660 media), else the image's own ISO when it is imported install media."""
    given = record.config.get("iso")
    if given:
        path = Path(given).resolve()
        check_boot_media(path)
        return str(path)
    if ISO not in image.files:
        return None
    if image.properties.get("el_torito") == "no":
        raise SpecError(
            f"image {_shown(image)} is an ISO without an El Torito boot record: firmware cannot boot it",
            hint="import bootable install media",
        )
    return str(image_dir / image.files[ISO])


def uefi_firmware(arch: str, files: VmFiles) -> UefiSpec:
    code, _template, package = UEFI_FILES[arch]
    if not Path(code).is_file():
        raise HostCapabilityError(f"no UEFI firmware for {arch} at {code}", hint=f"apt-get install {package}")
    return UefiSpec(code=code, vars=str(files.uefi_vars))


def seed_for(record: InstanceRecord, image: ImageRecord, files: VmFiles) -> Path | None:
    """The seed volume when the image reads a NoCloud seed; SpecError for cloud-init inputs given
    to an image without cloud-init (they would be silently ignored)."""
    if image.properties.get("cloud_init") == "nocloud":
        return files.seed
    if wants_cloud_init(record.config):
        raise SpecError(
            f"image {image.aliases[0] if image.aliases else image.name} has no cloud-init: "
            "--user-data and --ssh-key need one that has it",
            hint="use an image built with cloud-init, such as debian-bookworm (virtkit image build debian)",
        )
    return None


def _check_sockets(*paths: Path | None) -> None:
    for path in paths:
        if path is not None and len(str(path).encode()) > SOCKET_PATH_MAX:
            raise SpecError(
                f"socket path {path} is longer than the {SOCKET_PATH_MAX} bytes unix sockets allow",
                hint="use a shorter state root (--root) or instance name",
            )


def firmware_for(record: InstanceRecord, image: ImageRecord, iso: str | None) -> Firmware | None:
    """None for direct kernel boot; else the firmware that boots the disk or ISO."""
    firmware = _choice(record, "firmware", FIRMWARES, None)
    if firmware is None and iso is None and KERNEL in image.files:
        return None
    if DISK not in image.files and iso is None:
        raise SpecError(f"image {image.name} has nothing to boot: no kernel, disk or ISO")
    chosen = firmware or ("uefi" if record.arch == "aarch64" else "bios")
    if chosen == "bios" and record.arch == "aarch64":
        raise SpecError("aarch64 VMs boot with UEFI firmware only", hint="use --firmware uefi")
    return cast(Firmware, chosen)


def _check_bootable(image: ImageRecord, firmware: Firmware | None, iso: str | None) -> None:
    """Firmware boot of a disk needs a bootloader on it, which virtkit's own images (tiny, debian:
    they boot their kernel) do not have: firmware would find nothing and the guest say nothing."""
    if firmware is not None and iso is None and KERNEL in image.files:
        raise SpecError(
            f"image {_shown(image)} boots its own kernel: its disk has no bootloader for {firmware} "
            "firmware to start",
            hint="drop --firmware, give install media with --iso, or import a disk image with a bootloader",
        )


def build_spec(
    record: InstanceRecord,
    image: ImageRecord,
    image_dir: Path,
    paths: InstancePaths,
    *,
    verdict: Callable[[], bool | None] | None = None,
    host: str | None = None,
    tsc_khz: Callable[[], int | None] = host_tsc_khz,
    who: Callable[[], RunAs | None] = lookup_user,
) -> tuple[VmSpec, list[str]]:
    """The VM's spec and the notices for the user; SpecError/HostCapabilityError when it cannot run."""
    if InstanceKind.VM not in image.kinds:
        raise SpecError(f"image {image.name} cannot run as a VM (it is for: {', '.join(image.kinds)})")
    if record.arch not in ARCHES:
        raise SpecError(f"unsupported architecture {record.arch!r}: expected one of {', '.join(ARCHES)}")
    if image.arch != record.arch:
        raise SpecError(f"image {image.name} is for {image.arch}, not {record.arch}")
    accel, notices = resolve_accel(record, verdict, host)
    devices = cast(Devices, _choice(record, "devices", DEVICES, "virtio"))
    iso = iso_for(record, image, image_dir)
    firmware = firmware_for(record, image, iso)
    machine = _machine(record, firmware is None, devices)
    _check_bootable(image, firmware, iso)
    files = VmFiles(paths)
    properties = image.properties
    virtio = devices == "virtio"
    ready = files.ready if virtio and properties.get("ready_port") else None
    agent = files.agent_socket if virtio and properties.get("agent_port") else None
    _check_sockets(paths.monitor, files.console_socket, agent)
    direct = firmware is None
    seed = seed_for(record, image, files)
    agent_port = properties.get("agent_port", AGENT_PORT)
    nics = _nics(record, devices, machine)
    volumes = tuple(volume_spec(attachment, devices) for attachment in record.volumes)
    spec = VmSpec(
        name=record.name, uuid=record.uuid, arch=record.arch, accel=accel, machine=machine,
        cpus=max(1, math.ceil(record.cpus)), memory=record.memory, devices=devices,
        cpu_model=_cpu_model(record.arch, accel),
        pidfile=str(paths.pidfile), qmp_socket=str(paths.monitor),
        console_socket=str(files.console_socket), console_log=str(paths.console_log),
        kernel=_kernel(image, image_dir) if direct else None,
        initrd=str(image_dir / image.files[INITRD]) if direct and INITRD in image.files else None,
        cmdline=_cmdline(record, image) if direct else "",
        firmware=firmware, uefi=uefi_firmware(record.arch, files) if firmware == "uefi" else None,
        disks=_disks(image, iso, devices, files), iso=iso,
        ready_file=str(ready) if ready else None, ready_port=properties.get("ready_port", READY_PORT),
        agent_socket=str(agent) if agent else None, agent_port=agent_port,
        ready_marker=properties.get("ready_marker"),
        tsc_khz=tsc_khz() if machine == "microvm" and accel == "tcg" else None,
        ready_agent=bool(agent) and agent_port == QGA_PORT and not properties.get("ready_marker"),
        seed=str(seed) if seed else None,
        nics=nics, pcie_ports=pcie_ports(machine, nics),
        volumes=volumes, volume_ports=volume_ports(machine, devices, volumes),
    )  # fmt: skip
    check_room(spec)
    # Volumes are not among the files QEMU's user must reach: virtkit opens them and passes descriptors.
    opened = [paths.dir, image_dir, *(image_dir / name for name in image.files.values())]
    opened += _layers(record, paths)
    root = paths.dir.parent.parent
    spec, confined = confine(spec, record, opened + ([Path(iso)] if iso else []), who(), root)
    return spec, notices + confined


def _layers(record: InstanceRecord, paths: InstancePaths) -> list[Path]:
    """The shared layers under the VM's disk (linked clones): QEMU's user must read them too."""
    from virtkit.storage.layers import layer_path, root_of

    return [layer_path(root_of(paths.dir), layer, record.kind) for layer in record.layers]


def _nics(record: InstanceRecord, devices: Devices, machine: Machine) -> tuple[NicSpec, ...]:
    """The record's NICs: virtio with virtio devices, e1000 with emulated ones, unless a NIC says."""
    return tuple(nic_spec(record.name, nic, devices, machine) for nic in record.nics)


def nic_spec(name: str, nic: Nic, devices: Devices, machine: Machine) -> NicSpec:
    """How VM `name` (on `machine`, with `devices`) has `nic`: at its start or hot-plugged."""
    from virtkit.network.addressing import bridge_of

    model = cast(NicModel, nic.model or ("virtio" if devices == "virtio" else "e1000"))
    if model == "e1000" and machine != "q35":
        raise SpecError(
            f"an e1000 NIC needs a PCI machine, and {name} runs on {machine}",
            hint="use --machine q35, or a virtio NIC",
        )
    return NicSpec(device=nic.device, mac=nic.mac, bridge=bridge_of(nic.network), model=model,
                   index=int(nic.inner[len("eth"):]))  # fmt: skip


def pcie_ports(machine: Machine, nics: tuple[NicSpec, ...]) -> int:
    """q35's root ports: HOTPLUG_PORTS, and one more for each NIC numbered beyond them."""
    if machine != "q35":
        return 0
    return max([HOTPLUG_PORTS, *(nic.index + 1 for nic in nics if nic.index is not None)])


def _cpu_model(arch: str, accel: Accel) -> str:
    if accel == "kvm":
        return "host"
    # cortex-a57: under TCG, -cpu max's pointer authentication makes an arm64 boot several times slower.
    return "cortex-a57" if arch == "aarch64" else "max"


def _cmdline(record: InstanceRecord, image: ImageRecord) -> str:
    words = [image.properties.get("cmdline", "")]
    if image.format == "tiny":
        words.append(f"virtkit.hostname={record.name}")  # the tiny guest names itself after the VM
    return " ".join(word for word in words if word)


def _disks(image: ImageRecord, iso: str | None, devices: Devices, files: VmFiles) -> tuple[DiskSpec, ...]:
    """The root disk: the image's disk under a per-instance overlay, or an empty one to install to."""
    if DISK not in image.files and iso is None:
        return ()
    return (DiskSpec(str(files.disk), "qcow2", "virtio" if devices == "virtio" else "ahci"),)
