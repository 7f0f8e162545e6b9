"""Packing a configured Debian tree as a VM image: kernel, initrd and a bootloader-free qcow2 disk.

The root disk is a bare ext4 filesystem (no partition table, no bootloader) labelled
`virtkit-root`, filled by `mkfs.ext4 -d` straight from the tree, so nothing is ever mounted; it is
then converted to qcow2 with explicit formats. The VM boots it directly: `-kernel vmlinuz -initrd
initrd.img -append "root=LABEL=virtkit-root rw console=ttyS0"`; Debian's initramfs carries the
virtio and ext4 modules (MODULES=most) and udev, so the label is found on virtio-blk, AHCI or IDE.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from pathlib import Path

from virtkit.errors import RejectedError
from virtkit.images.debiantree import ROOT_LABEL
from virtkit.images.debootstrap import remove_tree
from virtkit.images.staged import DISK, INITRD, KERNEL, Progress, StagedImage
from virtkit.images.tools import run_tool
from virtkit.units import MiB

log = logging.getLogger(__name__)

COPY_TIMEOUT = 900.0
MKFS_TIMEOUT = 900.0
CONVERT_TIMEOUT = 900.0
HEADROOM = 256 * MiB  # free space in the root filesystem beyond 30 % more than the tree uses
CONSOLES = {"x86_64": "ttyS0", "aarch64": "ttyAMA0"}
AGENT_PORT = "org.qemu.guest_agent.0"


def copy_tree(source: Path, dest: Path) -> None:
    """Copy a root filesystem tree exactly (owners, modes, links, device nodes, xattrs)."""
    run_tool(["cp", "-a", "--reflink=auto", source, dest], timeout=COPY_TIMEOUT,
             what="copying the Debian tree", package="coreutils")


def tree_size(tree: Path) -> int:
    """Bytes the tree occupies (allocated blocks, hard links counted once, not following links)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, dirs, files in os.walk(tree):
        for name in dirs + files:
            info = os.lstat(os.path.join(directory, name))
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
    return total


def disk_size(used: int) -> int:
    """The root filesystem size for a tree using `used` bytes: 30 % more, plus headroom, whole MiB."""
    size = int(used * 1.3) + HEADROOM
    return -(-size // MiB) * MiB


def _version_key(release: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"[.-]", release)]


def find_kernel(tree: Path) -> str:
    """The kernel release (uname -r) whose vmlinuz and initrd.img are in the tree's /boot."""
    releases = sorted(
        (p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*")), key=_version_key
    )
    releases = [r for r in releases if (tree / "boot" / f"initrd.img-{r}").is_file()]
    if not releases:
        raise RejectedError("the Debian tree has no kernel with an initrd in /boot",
                            hint="rebuild it: virtkit image build debian --refresh")
    if len(releases) > 1:
        log.warning("several kernels in /boot (%s); using the newest", ", ".join(releases))
    return releases[-1]


def make_ext4(tree: Path, raw: Path, size: int) -> None:
    """A raw ext4 image of `size` bytes holding `tree`, made without mounting anything."""
    with raw.open("wb") as handle:
        handle.truncate(size)
    run_tool(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", tree, raw], timeout=MKFS_TIMEOUT,
             what="making the ext4 root filesystem", package="e2fsprogs")


def to_qcow2(raw: Path, qcow2: Path) -> None:
    run_tool(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", raw, qcow2],
             timeout=CONVERT_TIMEOUT, what="converting the root disk to qcow2", package="qemu-utils")


def pack_vm(
    tree: Path, staging: Path, *, arch: str, release: str, source: str, properties: dict[str, str],
    progress: Progress,
) -> StagedImage:
    """Kernel, initrd and qcow2 root disk from a configured tree; the tree is removed afterwards."""
    try:
        kernel = find_kernel(tree)
        for name, role_file in ((f"vmlinuz-{kernel}", "vmlinuz"), (f"initrd.img-{kernel}", "initrd.img")):
            shutil.copyfile(tree / "boot" / name, staging / role_file)
            (staging / role_file).chmod(0o644)
        size = disk_size(tree_size(tree))
        raw = staging / "disk.raw"
        progress("making the ext4 root filesystem", None)
        make_ext4(tree, raw, size)
    finally:
        remove_tree(tree)
    try:
        progress("converting the root disk to qcow2", None)
        to_qcow2(raw, staging / "disk.qcow2")
    finally:
        raw.unlink(missing_ok=True)
    console = CONSOLES.get(arch, "ttyS0")
    return StagedImage(
        name=f"debian-{release}",
        kinds=["vm"],
        arch=arch,
        format="debian",
        source=source,
        files={DISK: "disk.qcow2", KERNEL: "vmlinuz", INITRD: "initrd.img"},
        virtual_size=size,
        properties={
            **properties,
            "kernel_version": kernel,
            "cmdline": f"root=LABEL={ROOT_LABEL} rw console={console}",
            "root_label": ROOT_LABEL,
            "console": console,
            "agent": "qemu-guest-agent",
            "agent_port": AGENT_PORT,
        },
    )
