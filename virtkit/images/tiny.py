"""`virtkit image build tiny`: the small busybox guest every test and demo uses, as a VM and a container.

It is made of a Debian kernel (fetched and unpacked in the cache, see `kernel`), an initramfs
carrying exactly the modules a virtio or emulated-device VM needs and resize2fs (`tinyresize`: a VM
given a bigger disk grows its root filesystem at boot), a busybox root tree (see `tinyroot` and
`tinyinit`), and that tree again as a 64 MiB ext4 root disk in qcow2, made with `mkfs.ext4 -d`
without mounting anything. Only the download is slow; everything else takes a few seconds, so
nothing but the unpacked kernel package is cached.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from virtkit.errors import VirtkitError
from virtkit.images.debcache import debian_arch
from virtkit.images.initramfs import build_initramfs
from virtkit.images.kernel import (
    Kernel,
    fetch_kernel,
    load_conditions,
    load_order,
    module_bytes,
    parse_builtin,
    parse_modules_dep,
)
from virtkit.images.staged import DISK, INITRD, KERNEL, ROOTFS, Progress, StagedImage, no_progress
from virtkit.images.tinyinit import (
    AGENT_PORT,
    INITRAMFS_INIT,
    MODULE_LIST_PATH,
    READY_MARKER,
    READY_PORT,
    guest_files,
)
from virtkit.images.tinyresize import RESIZE2FS, resize_files
from virtkit.images.tinyroot import Busybox, agent_script, applet_paths, find_busybox, make_rootfs
from virtkit.images.tools import require_tool, run_tool
from virtkit.units import MiB

log = logging.getLogger(__name__)

NAME = "tiny"
HOSTNAME = "tiny"
DISK_SIZE = 64 * MiB
MKFS_TIMEOUT = 60.0
CONVERT_TIMEOUT = 120.0

# Modules the guest loads, each with the conditions under which it does (any of them; none:
# always), so a VM pays only for the drivers of the devices it has. Syntax: see tinyinit.
_DISK = ("virtio:2", "pciclass:0101", "pciclass:0106")  # a virtio, IDE or AHCI disk controller
# QEMU's pcie-root-port: a q35 VM has spare ones for NICs hot-plugged later, whose drivers must be
# loaded already (nothing in the guest loads modules on a hot-plug).
ROOT_PORT = "pci:1b36:000c"
# What every tiny VM needs: virtio on PCI (q35, pc) and MMIO (microvm, arm virt), disk, NIC,
# consoles and serial ports, and the root filesystem.
REQUIRED_MODULES: dict[str, tuple[str, ...]] = {
    "virtio_pci": ("pci:1af4", ROOT_PORT),
    "virtio_mmio": (),
    "virtio_blk": ("virtio:2",),
    "virtio_net": ("virtio:1", ROOT_PORT),
    "virtio_console": ("virtio:3",),
    "ext4": _DISK,
}
# Loaded when the kernel has them: entropy, balloon; crc32c for ext4's metadata checksums (a soft
# dependency modules.dep does not list); the power button and the input events acpid reads;
# emulated devices (AHCI, IDE, SCSI disks, e1000, e1000e) for `--devices emulated`; the arm power key.
OPTIONAL_MODULES: dict[str, tuple[str, ...]] = {
    "virtio_rng": ("virtio:4",),
    "virtio_balloon": ("virtio:5",),
    "crc32c_generic": _DISK,
    "button": (),
    "evdev": (),
    "ahci": ("pciclass:0106",),
    "ata_piix": ("pciclass:0101",),
    "sd_mod": ("pciclass:0106", "pciclass:0101"),
    "e1000": ("pci:8086:100e", "pci:8086:100c", "pci:8086:100f", ROOT_PORT),
    "e1000e": ("pci:8086:10d3",),
    "gpio_keys": (),
}
CONSOLES = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}


def build_tiny(
    staging: Path, *, cache: Path, arch: str = "x86_64", progress: Progress = no_progress
) -> StagedImage:
    """Build the tiny image into `staging` (an empty directory) using the download `cache`.

    Raises HostCapabilityError for a missing tool or an architecture virtkit cannot build,
    ToolError when a tool fails, VirtkitError for a file system error (disk full, ...). Whatever
    fails, the cache is left consistent; what was written to `staging` is the caller's to remove.
    """
    debian_arch(arch)  # refuse unknown architectures before any work
    try:
        return _build(staging, cache=cache, arch=arch, progress=progress)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise VirtkitError(f"cannot build the tiny image: {exc.strerror or exc}{where}") from exc


def _build(staging: Path, *, cache: Path, arch: str, progress: Progress) -> StagedImage:
    started = time.monotonic()
    mkfs = require_tool("mkfs.ext4", "e2fsprogs")
    qemu_img = require_tool("qemu-img", "qemu-utils")
    kernel = fetch_kernel(cache, arch, progress=progress)
    busybox = find_busybox(cache, arch)
    progress("assembling the root filesystem", 0.5)
    rootfs = staging / "rootfs"
    os_release = _os_release(busybox, kernel)
    make_rootfs(rootfs, busybox=busybox.path, applets=applet_paths(),
                files=guest_files(HOSTNAME, os_release), agent=agent_script())
    progress("writing the initramfs", 0.6)
    modules = _initramfs_modules(kernel)
    build_initramfs(staging / "initrd.img", rootfs=rootfs, init=INITRAMFS_INIT, modules=modules,
                    release=kernel.release, module_list=MODULE_LIST_PATH, extra=resize_files(cache, arch))
    progress("copying the kernel", 0.7)
    shutil.copyfile(kernel.vmlinuz, staging / "vmlinuz")
    if kernel.vmlinux is not None:
        shutil.copyfile(kernel.vmlinux, staging / "vmlinux")
    progress("making the root disk", 0.8)
    make_disk(staging / "disk.qcow2", rootfs, size=DISK_SIZE, mkfs=mkfs, qemu_img=qemu_img)
    progress("done", 1.0)
    log.info("built tiny (%s) in %.1f s", arch, time.monotonic() - started)
    return _describe(kernel, busybox, arch, [name for name, _, _ in modules])


def _initramfs_modules(kernel: Kernel) -> list[tuple[str, bytes, tuple[str, ...]]]:
    """(name, contents, conditions) of the modules the guest may load, dependencies first."""
    moddir = kernel.modules_dir
    index = parse_modules_dep((moddir / "modules.dep").read_text())
    builtin_file = moddir / "modules.builtin"
    builtin = parse_builtin(builtin_file.read_text()) if builtin_file.exists() else set()
    order = load_order(index, builtin, list(REQUIRED_MODULES), list(OPTIONAL_MODULES))
    when = load_conditions(index, {**REQUIRED_MODULES, **OPTIONAL_MODULES})
    return [(m.name, module_bytes(moddir / m.path), when.get(m.name, ())) for m in order]


def make_disk(
    out: Path, rootfs: Path, *, size: int, mkfs: str = "mkfs.ext4", qemu_img: str = "qemu-img"
) -> None:
    """An ext4 filesystem holding `rootfs` on a whole disk of `size` bytes (no partition table), as qcow2.

    4 KiB blocks and 256-byte inodes whatever the size (mke2fs's "small" defaults would prevent
    growing it far and lack nanosecond timestamps); the label is "virtkit-root".
    """
    raw = out.with_name(f".{out.name}.raw")
    try:
        with raw.open("wb") as handle:
            handle.truncate(size)
        run_tool([mkfs, "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-i", "8192",
                  "-L", "virtkit-root", "-E", "root_owner=0:0", "-d", rootfs, raw],
                 timeout=MKFS_TIMEOUT, what="making the root filesystem", package="e2fsprogs")
        run_tool([qemu_img, "convert", "-f", "raw", "-O", "qcow2", raw, out],
                 timeout=CONVERT_TIMEOUT, what="converting the root disk to qcow2", package="qemu-utils")
    finally:
        raw.unlink(missing_ok=True)


def suggested_cmdline(arch: str) -> str:
    """The kernel command line virtkit's VM driver should boot the tiny image with."""
    return f"console={CONSOLES[arch]} panic=-1 quiet"


def _os_release(busybox: Busybox, kernel: Kernel) -> str:
    return (
        'NAME="virtkit tiny"\nID=virtkit-tiny\n'
        f'VERSION_ID="{busybox.version}"\n'
        f'PRETTY_NAME="virtkit tiny (busybox {busybox.version}, Linux {kernel.release})"\n'
    )


def _describe(kernel: Kernel, busybox: Busybox, arch: str, modules: list[str]) -> StagedImage:
    files = {DISK: "disk.qcow2", KERNEL: "vmlinuz", INITRD: "initrd.img", ROOTFS: "rootfs"}
    properties = {
        "os": "busybox",
        "kernel_version": kernel.release,
        "kernel_package": f"{kernel.package} {kernel.version}",
        "busybox_version": busybox.version,
        "console": CONSOLES[arch],
        "ready_port": READY_PORT,
        "ready_marker": READY_MARKER,
        "agent_port": AGENT_PORT,
        "cmdline": suggested_cmdline(arch),
        "root_device": "/dev/vda",
        "root_fstype": "ext4",
        "init": "/sbin/init",
        "modules": ",".join(modules),
        # the initramfs grows the root filesystem to fill a bigger disk (launch --disk)
        "grow_root": f"/{RESIZE2FS}",
    }
    if kernel.vmlinux is not None:
        properties["vmlinux"] = "vmlinux"  # uncompressed PVH ELF: direct boot without decompression
    return StagedImage(
        name=NAME,
        kinds=["vm", "container"],
        arch=arch,
        format="tiny",
        source=f"built: busybox {busybox.version} + Debian {kernel.package} {kernel.version}",
        files=files,
        virtual_size=DISK_SIZE,
        properties=properties,
    )

