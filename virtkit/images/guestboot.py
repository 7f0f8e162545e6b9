"""How a disk copied from a server boots: by its own bootloader, or by its own kernel booted directly.

`inspect_disk` reads the disk as a raw image (the checked qcow2 exported read-only through FUSE by
qemu-storage-daemon: nothing of the guest is ever mounted on the host):

- boot code in its MBR (GRUB, syslinux, any BIOS bootloader writes it there; a GPT disk's GRUB
  too, in the protective MBR): BIOS firmware boots it, as its server did;
- else a GPT EFI system partition: UEFI firmware boots it;
- else no bootloader (a bare filesystem, a disk partitioned but never made bootable): the guest's
  own kernel and initrd from /boot (on the root filesystem, or a filesystem of their own) are
  copied out with debugfs (ext2/3/4 only) and booted directly, with root=UUID= of the filesystem
  holding /etc/fstab.

The partition tables (MBR, GPT) are parsed here, bounded; debugfs reads the untrusted filesystems
under resource limits, told only names checked by `RELEASE`. `pick_kernel` chooses among the
kernels found, by the names Debian/Ubuntu (vmlinuz-R + initrd.img-R), Fedora/RHEL
(initramfs-R.img) and SUSE (initrd-R) give them; `kernel_format` checks what is found is a kernel.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import struct
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import RejectedError
from virtkit.images.limits import Limits, run_limited
from virtkit.storage import fuseexport
from virtkit.units import GiB, MiB

log = logging.getLogger(__name__)

SECTOR = 512
EXT_MAGIC = 0xEF53
ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
EXTENDED_TYPES = (0x05, 0x0F, 0x85)
MAX_GPT_ENTRIES = 256
MAX_KERNEL = 256 * MiB
MAX_INITRD = 2 * GiB
RELEASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}", re.ASCII)
HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", re.ASCII)
DEBUGFS = Limits(wall=300.0, cpu=120, memory=1 * GiB)
# (kernel name, initrd name) patterns of a kernel release R, most common first.
_INITRDS = ("initrd.img-{}", "initramfs-{}.img", "initrd-{}", "initrd.img-{}.img")


@dataclass(frozen=True)
class Partition:
    start: int  # bytes from the start of the disk
    size: int
    esp: bool = False


@dataclass(frozen=True)
class Layout:
    boot_code: bool  # an MBR with boot code in it
    gpt: bool
    partitions: tuple[Partition, ...]
    notes: tuple[str, ...] = ()

    @property
    def has_esp(self) -> bool:
        return any(p.esp for p in self.partitions)


@dataclass(frozen=True)
class Boot:
    """How the copy boots: "bios", "uefi", or "direct" with the kernel and initrd written out."""

    how: str
    kernel: Path | None = None
    initrd: Path | None = None
    root: str = ""  # the root= of a direct boot
    release: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    hostname: str = ""  # a direct boot's: what its root filesystem's /etc/hostname says, if plain


def _version_key(release: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+~_-]", release)]


def pick_kernel(names: Collection[str]) -> tuple[str, str] | None:
    """The newest vmlinuz-R among `names` with an initrd of the same R (none: no kernel to boot).
    Rescue and debug kernels are passed over while an ordinary one exists."""
    found: list[tuple[str, str]] = []
    for name in names:
        release = name.removeprefix("vmlinuz-")
        if release == name or not RELEASE.fullmatch(release):
            continue
        initrd = next((p.format(release) for p in _INITRDS if p.format(release) in names), None)
        if initrd is not None:
            found.append((release, initrd))
    if not found:
        return None
    ordinary = [f for f in found if "rescue" not in f[0] and "debug" not in f[0]] or found
    release, initrd = max(ordinary, key=lambda f: _version_key(f[0]))
    return f"vmlinuz-{release}", initrd


def kernel_format(head: bytes, arch: str) -> bool:
    """Whether `head` (a file's first 4 KiB) starts a kernel QEMU boots directly on `arch`."""
    if arch == "x86_64":
        return len(head) > 0x206 and head[0x202:0x206] == b"HdrS"
    if arch == "aarch64":  # an arm64 Image, or one gzip-compressed (Debian's vmlinuz)
        return head[0x38:0x3C] == b"ARM\x64" or head.startswith(b"\x1f\x8b")
    return False


# --- partition tables --------------------------------------------------------------------------


def read_layout(fd: int, size: int) -> Layout:
    """The disk's partitions (MBR primaries or GPT entries), and whether its MBR has boot code."""
    mbr = os.pread(fd, SECTOR, 0)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        return Layout(False, False, ())
    entries = [struct.unpack_from("<B3xB3xII", mbr, 446 + 16 * i) for i in range(4)]
    boot_code = any(mbr[:440])
    if any(kind == 0xEE for _flag, kind, _start, _count in entries):
        return _gpt(fd, size, boot_code)
    if _is_ext(fd, 0):  # an ext superblock at 1 KiB: a bare filesystem whose boot block has 55AA
        return Layout(boot_code, False, ())
    parts, notes = [], []
    for _flag, kind, start, count in entries:
        if kind == 0 or count == 0:
            continue
        if kind in EXTENDED_TYPES:
            notes.append("its logical partitions (in an extended partition) were not looked into")
            continue
        if (start + count) * SECTOR <= size:
            parts.append(Partition(start * SECTOR, count * SECTOR, esp=kind == 0xEF))
    return Layout(boot_code, False, tuple(parts), tuple(notes))


def _gpt(fd: int, size: int, boot_code: bool) -> Layout:
    header = os.pread(fd, 92, SECTOR)
    if header[:8] != b"EFI PART":
        return Layout(boot_code, True, (), ("its GPT header is missing or damaged",))
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if not (128 <= entry_size <= 4096 and count > 0) or entries_lba * SECTOR >= size:
        return Layout(boot_code, True, (), ("its GPT header is damaged",))
    count = min(count, MAX_GPT_ENTRIES)
    table = os.pread(fd, count * entry_size, entries_lba * SECTOR)
    parts = []
    for index in range(len(table) // entry_size):
        entry = table[index * entry_size : (index + 1) * entry_size]
        kind = uuid.UUID(bytes_le=entry[:16])
        first, last = struct.unpack_from("<QQ", entry, 32)
        if kind.int == 0 or last < first or (last + 1) * SECTOR > size:
            continue
        parts.append(Partition(first * SECTOR, (last - first + 1) * SECTOR, esp=kind == ESP_TYPE))
    return Layout(boot_code, True, tuple(parts))


def _is_ext(fd: int, offset: int) -> bool:
    superblock = os.pread(fd, 0x78, offset + 1024)
    return len(superblock) == 0x78 and struct.unpack_from("<H", superblock, 0x38)[0] == EXT_MAGIC


def ext_uuid(fd: int, offset: int) -> str:
    return str(uuid.UUID(bytes=os.pread(fd, 16, offset + 1024 + 0x68)))


# --- reading an ext filesystem with debugfs ----------------------------------------------------


def _debugfs(raw: Path, offset: int, command: str, cwd: Path | None = None) -> str:
    argv = ["debugfs", "-R", command, f"{raw}?offset={offset}" if offset else str(raw)]
    if cwd is not None:  # `dump` writes where debugfs runs: a name of ours, never a path from the guest
        argv = ["env", "-C", str(cwd), *argv]
    return run_limited(argv, limits=DEBUGFS, what=f"reading the guest disk ({command.split()[0]})").stdout


def list_dir(raw: Path, offset: int, path: str) -> dict[str, str]:
    """The entries of directory `path` (an absolute path of ours) in the ext filesystem at
    `offset`: name -> octal mode (only names that are safe to give back to debugfs)."""
    entries = {}
    for line in _debugfs(raw, offset, f"ls -p {path}").splitlines():
        fields = line.split("/")
        if len(fields) >= 7 and RELEASE.fullmatch(fields[5] or "-"):
            entries[fields[5]] = fields[2]
    return entries


def _is_kind(mode: str, kind: int) -> bool:
    """Whether debugfs's octal `mode` (e.g. 040755, 100644) is of the file type `kind`."""
    return mode.isdigit() and stat.S_IFMT(int(mode, 8)) == kind


def _is_dir(mode: str) -> bool:
    return _is_kind(mode, stat.S_IFDIR)


@dataclass(frozen=True)
class _Fs:
    offset: int
    uuid: str
    boot: dict[str, str]  # what its /boot (or its top, for a /boot filesystem) holds
    boot_dir: str  # "/boot" or "/"
    root: bool  # it has /etc/fstab


def _filesystems(raw: Path, fd: int, layout: Layout) -> list[_Fs]:
    offsets = [p.start for p in layout.partitions] or [0]
    found = []
    for offset in offsets:
        if not _is_ext(fd, offset):
            continue
        top = list_dir(raw, offset, "/")
        root = _is_dir(top.get("etc", "")) and "fstab" in list_dir(raw, offset, "/etc")
        boot_dir = "/boot" if _is_dir(top.get("boot", "")) else "/"
        boot = list_dir(raw, offset, boot_dir) if boot_dir == "/boot" else top
        found.append(_Fs(offset, ext_uuid(fd, offset), boot, boot_dir, root))
    return found


def inspect_disk(raw: Path, out: Path, arch: str) -> Boot:
    """How the raw disk image `raw` boots; a direct boot's kernel and initrd are written into `out`."""
    fd = os.open(raw, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size or os.lseek(fd, 0, os.SEEK_END)
        layout = read_layout(fd, size)
        if layout.boot_code:
            return Boot("bios", notes=layout.notes)
        if layout.has_esp:
            return Boot("uefi", notes=layout.notes)
        filesystems = _filesystems(raw, fd, layout)
    finally:
        os.close(fd)
    root = next((f for f in filesystems if f.root), None)
    for fs in sorted(filesystems, key=lambda f: f is not root):
        regular = {name for name, mode in fs.boot.items() if _is_kind(mode, stat.S_IFREG)}
        picked = pick_kernel(regular)
        if picked is None or root is None:
            continue
        kernel, initrd = picked
        where = fs.boot_dir.rstrip("/")
        _debugfs(raw, fs.offset, f"dump {where}/{kernel} guest-kernel", cwd=out)
        _debugfs(raw, fs.offset, f"dump {where}/{initrd} guest-initrd", cwd=out)
        boot = Boot("direct", out / "guest-kernel", out / "guest-initrd", f"UUID={root.uuid}",
                    kernel.removeprefix("vmlinuz-"), layout.notes, _hostname(raw, root.offset))  # fmt: skip
        check_kernel(boot, arch)
        return boot
    raise RejectedError(
        "the disk has no bootloader, and no ext2/3/4 filesystem with a kernel and initrd in /boot "
        "beside a root filesystem: nothing virtkit can boot",
        hint="install a bootloader on the server before copying it (grub-install), or copy its files "
        "with --filesystem",
    )


def _hostname(raw: Path, offset: int) -> str:
    """The first line of the guest's /etc/hostname (read by debugfs, inside its filesystem), if it
    is a plain host name; "" otherwise."""
    lines = _debugfs(raw, offset, "cat /etc/hostname").splitlines()
    name = lines[0].strip() if lines else ""
    return name if HOSTNAME.fullmatch(name) else ""


def check_kernel(boot: Boot, arch: str) -> None:
    """The kernel and initrd written out are what they claim, within bounds; else RejectedError."""
    assert boot.kernel is not None and boot.initrd is not None
    for path, limit in ((boot.kernel, MAX_KERNEL), (boot.initrd, MAX_INITRD)):
        if not path.is_file() or path.is_symlink() or not 0 < path.stat().st_size <= limit:
            what = path.name.removeprefix("guest-")
            raise RejectedError(f"the guest's {what} for {boot.release} is empty, missing or too large")
    with boot.kernel.open("rb") as handle:
        head = handle.read(4096)
    if not kernel_format(head, arch):
        raise RejectedError(f"the guest's vmlinuz-{boot.release} is not an {arch} kernel QEMU can boot")


def tree_kernel(tree: Path, out: Path, arch: str, root: str) -> Boot:
    """The kernel and initrd in the untrusted `tree`'s /boot (looked up inside the tree only),
    copied into `out` for a direct boot with `root` as root=."""
    from virtkit.storage.rootpath import open_in_root, resolve_in_root

    boot_dir = resolve_in_root(tree, "boot")
    names: set[str] = set()
    if boot_dir is not None and boot_dir.is_dir():
        with os.scandir(boot_dir) as entries:
            names = {e.name for e in entries if e.is_file(follow_symlinks=False)}
    picked = pick_kernel(names)
    if picked is None:
        raise RejectedError(
            "the server has no kernel with its initrd in /boot: nothing to boot the copy with",
            hint="install its distribution's kernel package there (a container has none to copy)",
        )
    written = []
    for name, target, limit in (
        (picked[0], "guest-kernel", MAX_KERNEL),
        (picked[1], "guest-initrd", MAX_INITRD),
    ):
        fd = open_in_root(tree, f"boot/{name}")
        if fd is None:
            raise RejectedError(f"the server's /boot/{name} is not a regular file")
        with os.fdopen(fd, "rb") as source, (out / target).open("xb") as copy:
            copied = 0
            while chunk := source.read(1 * MiB):
                copied += len(chunk)
                if copied > limit:
                    raise RejectedError(f"the server's /boot/{name} is larger than {limit // MiB} MiB")
                copy.write(chunk)
        written.append(out / target)
    boot = Boot("direct", written[0], written[1], root, picked[0].removeprefix("vmlinuz-"))
    check_kernel(boot, arch)
    return boot


# --- a read-only raw view of a qcow2 disk --------------------------------------------------------


@contextlib.contextmanager
def raw_view(disk: Path) -> Iterator[Path]:
    """The qcow2 `disk`'s content as a read-only raw file (a FUSE export by qemu-storage-daemon)."""
    node = fuseexport.qcow2_node(disk, writable=False, standalone=True)  # an imported disk: no backing
    with fuseexport.exported(node, writable=False, what=f"{disk.name} to read it") as raw:
        yield raw
