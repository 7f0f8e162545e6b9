"""Bootable media for the firmware tests, made from the tiny image's own kernel and initrd.

    bios_disk    a raw disk as a BIOS machine boots one: syslinux's MBR boot code, one active
                 partition holding an ext4 filesystem with extlinux on it
    install_iso  an El Torito ISO 9660 image with isolinux (what install media are)
    uefi_disk    a raw GPT disk with an EFI system partition (FAT) holding systemd-boot as the
                 removable-media loader \\EFI\\BOOT\\BOOTX64.EFI and one loader entry

Every loader boots the kernel with `console=ttyS0` and `virtkit.hostname=<loader>`, so the tiny
guest's shell prompt on the serial console ("extlinux:/#") says which path booted it, after the
loader's own banner. The kernel is told `virtkit.root=none`: the guest runs from its initramfs
and never touches the disk it was booted from.

All of it is made from Debian packages (see DEBIAN_PACKAGES in scripts/dev.sh); extlinux needs
the ext4 filesystem mounted (a loop mount: root only) to install itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
SECTOR = 512
PARTITION_START = MiB  # sector 2048, where partitioning tools put the first partition
MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")
ISOLINUX = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
# What each builder needs: a command on PATH or a file, and the Debian package that has it.
NEEDS = {
    "bios": [("sfdisk", "fdisk"), ("mkfs.ext4", "e2fsprogs"), ("extlinux", "extlinux"),
             (str(MBR_CODE), "syslinux-common"), ("mount", "mount")],
    "iso": [("xorriso", "xorriso"), (str(ISOLINUX), "isolinux"), (str(LDLINUX), "syslinux-common")],
    "uefi": [("sfdisk", "fdisk"), ("mkfs.vfat", "dosfstools"), ("mcopy", "mtools"),
             (str(SYSTEMD_BOOT), "systemd-boot-efi")],
}  # fmt: skip
TIMEOUT = 120.0


@dataclass(frozen=True)
class Payload:
    """What the loaders boot: a kernel, its initramfs, and the command line they pass it."""

    kernel: Path
    initrd: Path
    cmdline: str = "console=ttyS0 panic=-1 quiet virtkit.root=none"

    def named(self, loader: str) -> str:
        """The command line with the loader's name as the guest's host name."""
        return f"{self.cmdline} virtkit.hostname={loader}"


def missing(kind: str) -> list[str]:
    """The Debian packages to install before `kind` ("bios", "iso", "uefi") media can be made."""
    absent = [package for need, package in NEEDS[kind] if not _present(need)]
    return sorted(set(absent))


def _present(need: str) -> bool:
    return Path(need).is_file() if need.startswith("/") else shutil.which(need) is not None


def run(*argv: str, stdin: str | None = None) -> None:
    """Run a tool; a failure raises with what it said."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}  # mtools: no geometry checks on a plain file
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


def _blank(path: Path, size: int, table: str) -> None:
    """A sparse file of `size` bytes with the partition table `table` (sfdisk's script format)."""
    with path.open("wb") as disk:
        disk.truncate(size)
    run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path), stdin=table)


@contextmanager
def _mounted(image: Path, offset: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="virtkit-bootdisk-") as mountpoint:
        run("mount", "-o", f"loop,offset={offset}", str(image), mountpoint)
        try:
            yield Path(mountpoint)
        finally:
            run("umount", mountpoint)


def bios_disk(path: Path, payload: Payload, size: int = 32 * MiB) -> Path:
    """A raw disk that SeaBIOS boots through extlinux into the payload."""
    _blank(path, size, f"label: dos\nstart={PARTITION_START // SECTOR}, type=83, bootable\n")
    with path.open("r+b") as disk:  # the MBR's boot code: it chain-loads the active partition
        disk.write(MBR_CODE.read_bytes()[:440])
    # extlinux 6.04 reads no ext4 with the 64bit feature, nor the files `mkfs.ext4 -d` writes
    # ("I/O error"): the files are copied in through the mount instead.
    fs_size = f"{(size - PARTITION_START) // 1024}k"
    run("mkfs.ext4", "-q", "-F", "-O", "^64bit", "-L", "bootdisk",
        "-E", f"offset={PARTITION_START}", str(path), fs_size)  # fmt: skip
    config = (
        "serial 0 115200\ndefault tiny\nprompt 0\ntimeout 0\nlabel tiny\n"
        f"  kernel /boot/vmlinuz\n  initrd /boot/initrd.img\n  append {payload.named('extlinux')}\n"
    )
    with _mounted(path, PARTITION_START) as root:
        boot = root / "boot"
        (boot / "extlinux").mkdir(parents=True)
        shutil.copyfile(payload.kernel, boot / "vmlinuz")
        shutil.copyfile(payload.initrd, boot / "initrd.img")
        (boot / "extlinux" / "extlinux.conf").write_text(config)
        run("extlinux", "--install", str(boot / "extlinux"))
    return path


def install_iso(path: Path, payload: Payload, work: Path) -> Path:
    """Bootable install media: isolinux on an El Torito ISO 9660 image (no emulation mode)."""
    tree = work / "iso-tree"
    (tree / "isolinux").mkdir(parents=True)
    shutil.copyfile(ISOLINUX, tree / "isolinux" / "isolinux.bin")
    shutil.copyfile(LDLINUX, tree / "isolinux" / "ldlinux.c32")
    shutil.copyfile(payload.kernel, tree / "vmlinuz")
    shutil.copyfile(payload.initrd, tree / "initrd.img")
    (tree / "isolinux" / "isolinux.cfg").write_text(
        "serial 0 115200\ndefault tiny\nprompt 0\ntimeout 0\n"
        f"label tiny\n  kernel /vmlinuz\n  initrd /initrd.img\n  append {payload.named('isolinux')}\n"
    )
    run("xorriso", "-as", "mkisofs", "-quiet", "-o", str(path), "-V", "VIRTKIT_TINY",
        "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
        "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", str(tree))  # fmt: skip
    return path


def data_iso(path: Path, work: Path) -> Path:
    """An ISO 9660 image without a boot record (a data CD: nothing firmware can boot)."""
    tree = work / "data-tree"
    tree.mkdir()
    (tree / "README.TXT").write_text("just data\n")
    run("xorriso", "-as", "mkisofs", "-quiet", "-o", str(path), "-V", "DATA", str(tree))
    return path


def uefi_disk(path: Path, payload: Payload, work: Path, size: int = 48 * MiB) -> Path:
    """A GPT disk whose EFI system partition OVMF boots: systemd-boot, then the payload."""
    esp_sectors = (size - 2 * PARTITION_START) // SECTOR  # room for the backup GPT at the end
    _blank(path, size, f"label: gpt\nstart={PARTITION_START // SECTOR}, size={esp_sectors}, type=uefi\n")
    run("mkfs.vfat", "-n", "VIRTKIT-ESP", "--offset", str(PARTITION_START // SECTOR), str(path),
        str(esp_sectors * SECTOR // 1024))  # fmt: skip
    esp = f"{path}@@{PARTITION_START}"
    loader = work / "loader.conf"
    loader.write_text("default tiny.conf\ntimeout 0\n")
    entry = work / "tiny.conf"
    entry.write_text(
        f"title virtkit tiny\nlinux /vmlinuz\ninitrd /initrd.img\noptions {payload.named('systemd-boot')}\n"
    )
    run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries")
    for source, target in (
        (SYSTEMD_BOOT, "::/EFI/BOOT/BOOTX64.EFI"),
        (payload.kernel, "::/vmlinuz"),
        (payload.initrd, "::/initrd.img"),
        (loader, "::/loader/loader.conf"),
        (entry, "::/loader/entries/tiny.conf"),
    ):
        run("mcopy", "-i", esp, str(source), target)
    return path
