"""The QEMU command line of a VM: a pure function of its `VmSpec` (golden-file tested).

Every device is explicit (`-nodefaults -no-user-config`), every disk names its format (QEMU never
probes one), and QEMU runs inside its seccomp sandbox with every optional restriction on.

QEMU is not asked to `-daemonize`: QEMU 7.2 installs its seccomp filter before daemonizing, and
its daemonizing calls `setsid` (refused by elevateprivileges=deny) after `fork` (refused by
spawn=deny), so QEMU would die of SIGSYS. `process.spawn` detaches it instead (new session, no
terminal, output to the runtime log); QEMU still writes and locks its own pidfile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from virtkit.drivers.qemu.spec import DiskSpec, VmSpec
from virtkit.drivers.qemu.volumes import volume_args

MiB = 1024 * 1024
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
Q35_AHCI_BUS = "ide"  # q35's built-in ICH9 AHCI controller names its ports ide.0 .. ide.5
AHCI_ID = "ahci0"  # the AHCI controller added on machines without one
PATA_ID = "pata0"  # the PIIX IDE controller added for bus="ide" disks
ROOT_PORT_SLOT = 0x1C  # q35: the first pcie.0 slot of the root ports
PORTS_PER_SLOT = 8  # functions of one multifunction slot


def build_argv(spec: VmSpec) -> list[str]:
    """The full command line, binary first."""
    return [
        spec.binary,
        *_identity(spec),
        *_control(spec),
        *_machine(spec),
        *_boot(spec),
        *_console(spec),
        *_disks(spec),
        *_cdrom(spec),
        *_seed(spec),
        *_channels(spec),
        *_virtio_extras(spec),
        *_network(spec),
        *volume_args(spec),  # last: the root disk stays the guest's first disk
    ]


def esc(value: str) -> str:
    """A value inside a QEMU option string: commas are doubled so a path cannot add options."""
    return value.replace(",", ",,")


def _identity(spec: VmSpec) -> list[str]:
    return ["-name", f"{esc(spec.name)},debug-threads=on", "-uuid", spec.uuid]


def _control(spec: VmSpec) -> list[str]:
    return [
        "-nodefaults", "-no-user-config",
        "-sandbox", SANDBOX,
        "-pidfile", spec.pidfile,
        "-display", "none",
        "-msg", "timestamp=on",
        "-chardev", f"socket,id=qmp,path={esc(spec.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]  # fmt: skip


def _machine(spec: VmSpec) -> list[str]:
    options: list[str] = [spec.machine]
    if spec.machine == "microvm" and spec.accel == "kvm":
        # The lean path: no legacy timers or interrupt controllers (the guest uses the TSC-deadline
        # timer KVM provides). Under TCG the guest needs them, so they stay.
        options.append("pit=off,pic=off,rtc=off")
    if spec.uefi is not None:
        options.append("pflash0=uefi-code,pflash1=uefi-vars")
    if spec.firmware == "bios" and spec.kernel is None:
        # No display: QEMU then tells SeaBIOS (fw_cfg etc/sercon-port) to mirror its text screen,
        # and the bootloader's, on the serial console, so `virtkit console` shows the firmware,
        # the boot menu and "No bootable device", and takes keys for them.
        options.append("graphics=off")
    memory = -(-spec.memory // MiB)
    return [
        "-machine", ",".join(options),
        "-accel", spec.accel,
        "-cpu", spec.cpu_model,
        "-smp", str(spec.cpus),
        "-m", f"{memory}M",
    ]  # fmt: skip


def _boot(spec: VmSpec) -> list[str]:
    if spec.kernel is not None:
        append = spec.cmdline
        if spec.tsc_khz:
            append = f"{append} tsc_early_khz={spec.tsc_khz}".strip()
        initrd = ["-initrd", spec.initrd] if spec.initrd else []
        return ["-kernel", spec.kernel, *initrd, "-append", append]
    if spec.uefi is not None:
        return [
            "-blockdev",
            f"driver=raw,node-name=uefi-code,read-only=on,file.driver=file,file.filename={esc(spec.uefi.code)}",
            "-blockdev",
            f"driver=raw,node-name=uefi-vars,file.driver=file,file.filename={esc(spec.uefi.vars)}",
        ]
    return []  # BIOS: the machine's default firmware (SeaBIOS on q35)


def _console(spec: VmSpec) -> list[str]:
    socket = f"socket,id=console,path={esc(spec.console_socket)},server=on,wait=off"
    logged = f"{socket},logfile={esc(spec.console_log)},logappend=on"
    return ["-chardev", logged, "-serial", "chardev:console"]


def _firmware_boot(spec: VmSpec) -> bool:
    return spec.kernel is None


def _ahci_bus(spec: VmSpec) -> tuple[list[str], str]:
    """The AHCI controller's arguments (none on q35, which has one) and its bus name prefix."""
    if spec.machine == "q35":
        return [], Q35_AHCI_BUS
    return ["-device", f"ahci,id={AHCI_ID}"], AHCI_ID


def _disks(spec: VmSpec) -> list[str]:
    args: list[str] = []
    ahci_ports = pata_units = 0
    for index, disk in enumerate(spec.disks):
        node = f"disk{index}"
        args += _blockdev(node, disk)
        boot = f",bootindex={index + 1}" if _firmware_boot(spec) else ""
        if disk.bus == "virtio":
            model = "virtio-blk-device" if spec.mmio else "virtio-blk-pci"
            args += ["-device", f"{model},drive={node},id={node}-dev{boot}"]
        elif disk.bus == "ahci":
            controller, bus = _ahci_bus(spec)
            if ahci_ports == 0:
                args += controller
            args += ["-device", f"ide-hd,drive={node},bus={bus}.{ahci_ports},id={node}-dev{boot}"]
            ahci_ports += 1
        else:
            if pata_units == 0:
                args += ["-device", f"piix3-ide,id={PATA_ID}"]
            channel, unit = divmod(pata_units, 2)
            args += [
                "-device",
                f"ide-hd,drive={node},bus={PATA_ID}.{channel},unit={unit},id={node}-dev{boot}",
            ]
            pata_units += 1
    return args


def _blockdev(node: str, disk: DiskSpec) -> list[str]:
    """The disk's block nodes. A writable disk sits under a throttle filter with its own group,
    so its I/O limits can be set and changed while the VM runs (no limits: nothing throttled)."""
    readonly = ",read-only=on" if disk.readonly else ""
    image = f"driver={disk.format},node-name={{}}{readonly},file.driver=file,file.filename={esc(disk.path)}"
    if disk.readonly:
        return ["-blockdev", image.format(node)]
    limits = "".join(
        f",{key}={value}" for key, value in (("x-iops-total", disk.iops), ("x-bps-total", disk.bps)) if value
    )
    return [
        "-object", f"throttle-group,id=tg-{node}{limits}",
        "-blockdev", image.format(f"{node}-image"),
        "-blockdev", f"driver=throttle,node-name={node},throttle-group=tg-{node},file={node}-image",
    ]  # fmt: skip


def _cdrom(spec: VmSpec) -> list[str]:
    """The install ISO on the AHCI controller, after any AHCI disks; first to boot."""
    if spec.iso is None:
        return []
    controller, bus = _ahci_bus(spec)
    port = sum(1 for disk in spec.disks if disk.bus == "ahci")
    if port:
        controller = []  # already added by the disks
    return [
        *controller,
        "-blockdev", f"driver=raw,node-name=cd0,read-only=on,file.driver=file,file.filename={esc(spec.iso)}",
        "-device", f"ide-cd,drive=cd0,bus={bus}.{port},id=cd0-dev,bootindex=0",
    ]  # fmt: skip


def _seed(spec: VmSpec) -> list[str]:
    """cloud-init's NoCloud seed, read-only: a virtio disk, or with emulated devices a CD-ROM on the
    AHCI controller, on the port after its disks and the install ISO; not in the boot order."""
    if spec.seed is None:
        return []
    blockdev = f"driver=raw,node-name=seed0,read-only=on,file.driver=file,file.filename={esc(spec.seed)}"
    if spec.devices == "virtio":
        device = f"virtio-blk-{_virtio_suffix(spec)},drive=seed0,id=seed0-dev"
        return ["-blockdev", blockdev, "-device", device]
    controller, bus = _ahci_bus(spec)
    port = sum(1 for disk in spec.disks if disk.bus == "ahci") + (1 if spec.iso is not None else 0)
    if port:
        controller = []  # already added by the disks or the ISO
    device = f"ide-cd,drive=seed0,bus={bus}.{port},id=seed0-dev"
    return [*controller, "-blockdev", blockdev, "-device", device]


def _virtio_suffix(spec: VmSpec) -> str:
    return "device" if spec.mmio else "pci"


def _channels(spec: VmSpec) -> list[str]:
    """virtio-serial ports: the guest's readiness line (to a file) and its command agent (a socket)."""
    if spec.devices != "virtio" or (spec.ready_file is None and spec.agent_socket is None):
        return []
    args = ["-device", f"virtio-serial-{_virtio_suffix(spec)},id=vser0"]
    if spec.ready_file is not None:
        args += [
            "-chardev", f"file,id=ready,path={esc(spec.ready_file)}",
            "-device", f"virtserialport,bus=vser0.0,chardev=ready,name={esc(spec.ready_port)}",
        ]  # fmt: skip
    if spec.agent_socket is not None:
        args += [
            "-chardev", f"socket,id=agent,path={esc(spec.agent_socket)},server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,chardev=agent,name={esc(spec.agent_port)}",
        ]  # fmt: skip
    return args


def _virtio_extras(spec: VmSpec) -> list[str]:
    if spec.devices != "virtio":
        return []
    suffix = _virtio_suffix(spec)
    return [
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", f"virtio-rng-{suffix},rng=rng0",
        "-device", f"virtio-balloon-{suffix},id=balloon0",
    ]  # fmt: skip


def _network(spec: VmSpec) -> list[str]:
    """NICs: a `-netdev tap` on the tap `start` made (QEMU opens it by name; no script runs) and
    the guest's device: virtio-net-device (microvm, virt), virtio-net-pci, or an emulated e1000;
    on q35 each on the root port of its number (which `_root_ports` makes, empty ones too)."""
    args = _root_ports(spec)
    for nic in spec.nics:
        # ids from the host device's name, so a NIC is found again to unplug whenever it came
        args += ["-netdev", f"tap,id={netdev_id(nic.device)},ifname={nic.device},script=no,downscript=no"]
        device = f"{nic_driver(spec, nic.model)},id={device_id(nic.device)},netdev={netdev_id(nic.device)}"
        port = nic_port(spec, nic.index)
        args += ["-device", f"{device},mac={nic.mac}" + (f",bus={port}" if port else "")]
    return args


def _root_ports(spec: VmSpec) -> list[str]:
    """q35's PCIe root ports rp0, rp1, ...: a PCIe device can be hot-plugged only into a root port
    (pcie.0 takes none), and each port holds one device, so every NIC, cold- or hot-plugged, sits
    on the port of its number and every port is there from the start (empty until a NIC comes).
    A NIC's place thus never depends on what was plugged when: the saved argv always describes the
    running machine. They are packed as libvirt does, 8 to a multifunction slot from 0x1c up (well
    clear of the slots QEMU hands out from 1 up), each its own chassis."""
    args: list[str] = []
    for index in range(spec.pcie_ports):
        slot, function = divmod(index, PORTS_PER_SLOT)
        multi = ",multifunction=on" if function == 0 else ""
        address = f"addr={ROOT_PORT_SLOT + slot:#x}.{function}{multi}"
        args += ["-device", f"pcie-root-port,id={root_port(index)},bus=pcie.0,chassis={index + 1},"
                            f"port={0x10 + index:#x},{address}"]  # fmt: skip
    return args


def root_port(index: int) -> str:
    return f"rp{index}"


def nic_port(spec: VmSpec, index: int | None) -> str | None:
    """The root port NIC number `index` sits on (None: on the machine's own bus)."""
    if index is None or not 0 <= index < spec.pcie_ports:
        return None
    return root_port(index)


def netdev_id(device: str) -> str:
    return f"net-{device}"


def device_id(device: str) -> str:
    return f"nic-{device}"


def nic_driver(spec: VmSpec, model: str) -> str:
    """QEMU's device for a NIC model on the spec's machine."""
    if model == "e1000":
        return "e1000"
    return "virtio-net-device" if spec.mmio else "virtio-net-pci"


def with_tap_fds(argv: Sequence[str], fds: Mapping[str, int]) -> list[str]:
    """`argv` with each `-netdev tap,...,ifname=DEV,...` naming the open descriptor of DEV instead
    (`start` opens the taps; the saved argv names them, which is what people read)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if i and out[i - 1] == "-netdev" and arg.startswith("tap,"):
            options = arg.split(",")
            device = next((o[len("ifname="):] for o in options if o.startswith("ifname=")), None)
            if device is not None and device in fds:
                kept = [o for o in options if not o.startswith(("ifname=", "script=", "downscript="))]
                out[i] = ",".join([*kept, f"fd={fds[device]}"])
    return out
