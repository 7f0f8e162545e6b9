"""`virtkit convert NAME`: a Linux guest made for emulated hardware made to boot on virtio (as virt-v2v).

The VM must be stopped. Its disk is opened offline (storage/guestdisk.py: a qcow2 overlay on it,
exported through FUSE by qemu-storage-daemon, a loop device per partition, mounted only in a
private mount namespace), and in the guest:

- virtio modules (virtio_pci virtio_blk virtio_scsi virtio_net, virtio_console when the kernel has
  it) go into its initramfs: initramfs-tools (/etc/initramfs-tools/modules, then
  ``update-initramfs -u -k all``) or dracut (/etc/dracut.conf.d/virtkit-virtio.conf, then
  ``dracut -f --regenerate-all``), run chrooted in the guest with /proc /sys /dev bound;
- /dev/sdX, /dev/hdX, /dev/xvdX names of the first disk's partitions in /etc/fstab, /etc/default/grub,
  /boot/grub/grub.cfg and extlinux/syslinux configs become ``UUID=`` of their filesystem;
- VMware and VirtualBox guest tools are purged (dpkg --purge / rpm -e, chrooted);
- qemu-guest-agent, when installed, is enabled (a multi-user.target.wants symlink);
- network names: 70-persistent-net.rules is removed, and (the decision) each NIC of the VM's record
  is named ``ethN`` by its MAC with a systemd .link file (/etc/systemd/network/70-virtkit-ethN.link),
  and the interface names of /etc/network/interfaces and netplan files are rewritten to eth0, eth1...
  in the order they first appear there: what the names become no longer depends on the PCI slot
  virtio puts the NIC in (predictable names do).

Every guest path is resolved inside the guest's root (storage/rootpath.py): a symlink to
/etc/passwd of the host ends in the guest's /etc/passwd. The changes go to the overlay; only when
all of them succeeded is it committed into the disk and the record switched to virtio
(``config["devices"] = "virtio"``, an e1000 NIC's model cleared: as `--devices` and
`network attach --model` record them). With `dry_run` the same is done in an overlay thrown away.

A VM that boots a kernel and initrd kept with its image (p2v's direct boot) cannot boot the new
initrd (the image's is shared, and read-only): its guest is converted but the VM keeps emulated
devices, and a note says so.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtkit.drivers.base import InstancePaths
from virtkit.errors import RejectedError, StateError, ToolError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, InstanceState, validate_name
from virtkit.storage import guestdisk
from virtkit.storage.rootpath import read_in_root, resolve_in_root
from virtkit.store import Store

log = logging.getLogger(__name__)

VIRTIO_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net")
OPTIONAL_MODULES = ("virtio_console",)
GUEST_TOOLS = ("open-vm-tools", "open-vm-tools-desktop", "vmware-tools", "virtualbox-guest-utils",
               "virtualbox-guest-x11", "virtualbox-guest-dkms", "virtualbox-guest-additions-iso")  # fmt: skip
BOOT_CONFIGS = ("/etc/default/grub", "/boot/grub/grub.cfg", "/boot/grub2/grub.cfg",
                "/boot/extlinux/extlinux.conf", "/boot/extlinux.conf", "/boot/syslinux/syslinux.cfg",
                "/extlinux.conf", "/syslinux.cfg")  # fmt: skip
DEVICE = re.compile(r"(?<![\w/])(?:/dev/)(?:sd|hd|xvd)a([1-9][0-9]?)\b")
NET_NAME = re.compile(r"\b(eth[0-9]+|ens[0-9]+|enp[0-9]+s[0-9]+(?:f[0-9]+)?|eno[0-9]+)\b")
CHROOT_TIMEOUT = 1800
MAX_FILE = 1 << 20
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Conversion:
    """What a conversion did (or, dry, would do)."""

    name: str
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    devices_before: str = "emulated"
    devices_after: str = "emulated"
    dry_run: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "changes": self.changes, "notes": self.notes, "dry_run": self.dry_run,
                "devices_before": self.devices_before, "devices_after": self.devices_after,
                "seconds": round(self.seconds, 2)}  # fmt: skip


def convert(root: Path, store: Store, name: str, *, dry_run: bool = False) -> Conversion:
    """Convert the stopped VM `name`'s Linux guest to virtio; the record switches at the very end."""
    validate_name(name)
    with store.lock("instance", name):  # no start, snapshot or delete meanwhile
        return _convert(root, store, name, dry_run)


def _convert(root: Path, store: Store, name: str, dry_run: bool) -> Conversion:
    started = time.monotonic()
    record = store.get(InstanceRecord, name)
    _check_stopped(root, record)
    if _direct_boot(store, record):  # refused before the guest is touched: nothing would use it
        raise StateError(
            f"VM {name} boots the kernel and initrd kept with its image (direct boot), not the guest's "
            "own: a conversion would rebuild an initrd it never boots",
            hint="it keeps emulated devices; an image with a bootloader on its disk can be converted",
        )
    result = Conversion(name, dry_run=dry_run, devices_before=_devices(record))
    disk = InstancePaths.of(root, name).dir / "root.qcow2"
    if not disk.is_file() or disk.is_symlink():
        raise StateError(f"VM {name} has no disk of its own ({disk.name})")
    overlay = disk.with_name(".convert-overlay.qcow2")
    overlay.unlink(missing_ok=True)
    guestdisk.make_overlay(disk, overlay)
    try:
        with guestdisk.exported(overlay) as raw, guestdisk.attached(raw) as parts:
            macs = [nic.mac for nic in record.nics]
            done = guestdisk.in_private_namespace(lambda: _in_guest(raw.parent, parts, macs, dry_run))
        result.changes += done["changes"]
        result.notes += done["notes"]
        if not dry_run:
            guestdisk.commit_overlay(overlay)
    finally:
        overlay.unlink(missing_ok=True)
    _switch(store, record, result)
    result.seconds = time.monotonic() - started
    return result


def _check_stopped(root: Path, record: InstanceRecord) -> None:
    if record.kind is not InstanceKind.VM:
        raise RejectedError(f"{record.name} is a container: only VMs are converted")
    pidfile = InstancePaths.of(root, record.name).pidfile
    alive = False
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        alive = True
    except (OSError, ValueError):
        pass
    if alive or record.state not in (InstanceState.STOPPED, InstanceState.ERROR):
        state = "running" if alive else record.state.value
        raise StateError(f"VM {record.name} is {state}: stop it first", hint=f"virtkit stop {record.name}")


def _devices(record: InstanceRecord) -> str:
    emulated = record.config.get("devices") == "emulated" or any(n.model == "e1000" for n in record.nics)
    return "emulated" if emulated else "virtio"


def _direct_boot(store: Store, record: InstanceRecord) -> bool:
    """Whether the VM boots a kernel kept with its image (p2v's direct boot)."""
    from virtkit.images.staged import KERNEL

    if record.image is None:
        return False
    image = store.find(ImageRecord, record.image)
    return image is not None and KERNEL in image.files


def _switch(store: Store, record: InstanceRecord, result: Conversion) -> None:
    """The record to virtio devices (the last step: only after the disk was committed)."""
    result.devices_after = "virtio"
    if result.devices_before == "virtio":
        return
    result.changes.append("VM devices: emulated (AHCI, e1000) -> virtio")
    if result.dry_run:
        return
    record.config = {**record.config, "devices": "virtio"}
    for nic in record.nics:
        if nic.model == "e1000":
            nic.model = None
    store.put(record)


# --- inside the guest (a child in a private mount namespace) ------------------------------------


def _in_guest(scratch: Path, parts: list[guestdisk.Part], macs: list[str], dry: bool) -> dict[str, list[str]]:
    top = scratch / "root"
    top.mkdir()
    changes: list[str] = []
    notes: list[str] = []
    guest = _mount_root(top, parts)
    try:
        notes += _mount_others(guest, parts)
        changes += _rewrite_devices(guest, parts, dry)
        changes += _network(guest, macs, dry)
        changes += _guest_agent(guest, dry)
        _bind_system(guest)
        changes += _remove_tools(guest, dry, notes)
        changes += _initramfs(guest, dry, notes)
    finally:
        guestdisk.unmount_all(top)
    return {"changes": changes, "notes": notes}


def _mount_root(top: Path, parts: list[guestdisk.Part]) -> Path:
    for part in parts:
        if part.fstype not in ("ext2", "ext3", "ext4", "xfs", "btrfs"):
            continue
        guestdisk.mount(part.loop, top, part.fstype)
        if read_in_root(top, "/etc/fstab") is not None and (
            read_in_root(top, "/etc/os-release") or read_in_root(top, "/usr/lib/os-release")
        ):
            return top
        guestdisk.unmount_all(top)
    raise RejectedError("no Linux root filesystem on the disk (none with /etc/fstab and /etc/os-release)")


def _by_spec(spec: str, parts: list[guestdisk.Part]) -> guestdisk.Part | None:
    found = DEVICE.fullmatch(spec)
    for part in parts:
        if (spec == f"UUID={part.uuid}" and part.uuid) or (found and int(found.group(1)) == part.index):
            return part
    return None


def _mount_others(guest: Path, parts: list[guestdisk.Part]) -> list[str]:
    """/boot and /boot/efi when they are filesystems of their own (update-initramfs writes /boot)."""
    notes = []
    for line in _text(guest, "/etc/fstab").splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#") or fields[1] not in ("/boot", "/boot/efi"):
            continue
        part = _by_spec(fields[0], parts)
        where = resolve_in_root(guest, fields[1])
        if part is None or where is None or not where.is_dir():
            notes.append(f"{fields[1]} ({fields[0]}) not found on this disk: not mounted")
            continue
        guestdisk.mount(part.loop, where, part.fstype)
    return notes


def _bind_system(guest: Path) -> None:
    for name in ("proc", "sys", "dev"):
        where = resolve_in_root(guest, f"/{name}")
        if where is None or not where.is_dir():
            raise RejectedError(f"the guest has no /{name} directory")
        guestdisk.bind(f"/{name}", where)


def _text(guest: Path, path: str) -> str:
    data = read_in_root(guest, path, MAX_FILE + 1)
    if data is None:
        return ""
    if len(data) > MAX_FILE:
        raise RejectedError(f"the guest's {path} is larger than {MAX_FILE} bytes")
    return data.decode("utf-8", errors="surrogateescape")


def _write(guest: Path, path: str, text: str, mode: int = 0o644) -> None:
    """Write the guest's `path` (resolved inside the guest: never through a link out of it)."""
    parent = resolve_in_root(guest, os.path.dirname(path))
    if parent is None or not parent.is_dir():
        raise RejectedError(f"the guest has no directory {os.path.dirname(path)}")
    real = resolve_in_root(guest, path) or parent / os.path.basename(path)
    try:
        fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:  # a dangling link (to outside the guest, say): not followed
        raise RejectedError(f"the guest's {path} cannot be written: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out:
        out.write(text)


def _chroot(guest: Path, argv: list[str]) -> None:
    env = {"PATH": PATH_ENV, "LANG": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(["chroot", str(guest), *argv], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=CHROOT_TIMEOUT, env=env, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ToolError(f"{argv[0]} in the guest took more than {CHROOT_TIMEOUT} s") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()[-400:]
        raise ToolError(f"{' '.join(argv)} in the guest failed: {said}")


def _rewrite_devices(guest: Path, parts: list[guestdisk.Part], dry: bool) -> list[str]:
    changes = []
    for path in ("/etc/fstab", *BOOT_CONFIGS):
        text = _text(guest, path)
        seen: list[str] = []

        def by_uuid(found: re.Match[str], seen: list[str] = seen, path: str = path) -> str:
            part = _by_spec(found.group(0), parts)
            if part is None or not part.uuid:
                return found.group(0)
            seen.append(f"{path}: {found.group(0)} -> UUID={part.uuid}")
            return f"UUID={part.uuid}"

        new = DEVICE.sub(by_uuid, text)
        if new != text:
            changes += sorted(set(seen))
            if not dry:
                _write(guest, path, new)
    return changes


def _network(guest: Path, macs: list[str], dry: bool) -> list[str]:
    changes = []
    rules = resolve_in_root(guest, "/etc/udev/rules.d/70-persistent-net.rules")
    if rules is not None and rules.is_file():
        changes.append("removed /etc/udev/rules.d/70-persistent-net.rules")
        if not dry:
            rules.unlink()
    names: dict[str, str] = {}
    files = ["/etc/network/interfaces", *_netplan_files(guest)]
    for path in files:
        for found in NET_NAME.finditer(_text(guest, path)):
            if found.group(1) not in names and len(names) < max(len(macs), 1):
                names[found.group(1)] = f"eth{len(names)}"
    for path in files:
        text = _text(guest, path)
        new = NET_NAME.sub(lambda m: names.get(m.group(1), m.group(1)), text)
        if new != text:
            changes += [f"{path}: interface {old} -> {eth}" for old, eth in names.items() if old != eth]
            if not dry:
                _write(guest, path, new)
    linkdir = resolve_in_root(guest, "/etc/systemd") is not None
    for index, mac in enumerate(macs if linkdir else []):
        path = f"/etc/systemd/network/70-virtkit-eth{index}.link"
        changes.append(f"{path}: the NIC {mac} is named eth{index}")
        if not dry:
            _mkdir(guest, "/etc/systemd/network")
            _write(guest, path, f"[Match]\nMACAddress={mac}\n\n[Link]\nName=eth{index}\n")
    return changes


def _netplan_files(guest: Path) -> list[str]:
    where = resolve_in_root(guest, "/etc/netplan")
    if where is None or not where.is_dir():
        return []
    return [f"/etc/netplan/{e.name}" for e in sorted(os.scandir(where), key=lambda e: e.name)
            if e.name.endswith(".yaml") and e.is_file(follow_symlinks=False)]  # fmt: skip


def _mkdir(guest: Path, path: str) -> None:
    parent = resolve_in_root(guest, os.path.dirname(path))
    if parent is None or not parent.is_dir():
        raise RejectedError(f"the guest has no directory {os.path.dirname(path)}")
    if resolve_in_root(guest, path) is None:
        os.mkdir(parent / os.path.basename(path), 0o755)


def _guest_agent(guest: Path, dry: bool) -> list[str]:
    unit = next((u for u in ("/lib/systemd/system/qemu-guest-agent.service",
                             "/usr/lib/systemd/system/qemu-guest-agent.service")
                 if read_in_root(guest, u, 1) is not None), None)  # fmt: skip
    if unit is None:
        return []
    wants = "/etc/systemd/system/multi-user.target.wants"
    link = f"{wants}/qemu-guest-agent.service"
    parent = resolve_in_root(guest, "/etc/systemd/system")
    if parent is None or os.path.lexists(parent / "multi-user.target.wants" / "qemu-guest-agent.service"):
        return []
    if not dry:
        _mkdir(guest, wants)
        os.symlink(unit, parent / "multi-user.target.wants" / "qemu-guest-agent.service")
    return [f"enabled qemu-guest-agent ({link} -> {unit})"]


def _installed_debs(guest: Path) -> set[str]:
    installed, package = set(), ""
    data = read_in_root(guest, "/var/lib/dpkg/status", 64 << 20) or b""
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("Package: "):
            package = line.split(": ", 1)[1].strip()
        elif line.startswith("Status: ") and line.endswith(" installed"):
            installed.add(package)
    return installed


def _remove_tools(guest: Path, dry: bool, notes: list[str]) -> list[str]:
    if read_in_root(guest, "/var/lib/dpkg/status", 1) is not None:
        found = sorted(set(GUEST_TOOLS) & _installed_debs(guest))
        if found and not dry:
            _chroot(guest, ["dpkg", "--purge", *found])
        return [f"removed the guest tools package {p} (dpkg --purge)" for p in found]
    if resolve_in_root(guest, "/var/lib/rpm") is not None or resolve_in_root(guest, "/usr/lib/sysimage/rpm"):
        found = [p for p in GUEST_TOOLS if _rpm_has(guest, p)]
        if found and not dry:
            _chroot(guest, ["rpm", "-e", *found])
        return [f"removed the guest tools package {p} (rpm -e)" for p in found]
    if any(resolve_in_root(guest, p) for p in ("/usr/bin/vmware-toolbox-cmd", "/usr/sbin/VBoxService")):
        notes.append("VMware/VirtualBox guest tools found, but not as a package: left in place")
    return []


def _rpm_has(guest: Path, package: str) -> bool:
    done = subprocess.run(["chroot", str(guest), "rpm", "-q", package], capture_output=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={"PATH": PATH_ENV}, check=False)  # fmt: skip
    return done.returncode == 0


def _kernel_modules(guest: Path) -> list[str]:
    """The optional modules some kernel of the guest has (virtio_console is built in on some)."""
    where = resolve_in_root(guest, "/lib/modules") or resolve_in_root(guest, "/usr/lib/modules")
    if where is None or not where.is_dir():
        return []
    listing = " ".join(_text(guest, f"/lib/modules/{e.name}/modules.dep") for e in os.scandir(where))
    return [m for m in OPTIONAL_MODULES if f"/{m}.ko" in listing]


def _initramfs(guest: Path, dry: bool, notes: list[str]) -> list[str]:
    modules = [*VIRTIO_MODULES, *_kernel_modules(guest)]
    if all(resolve_in_root(guest, p) for p in ("/usr/sbin/update-initramfs", "/etc/initramfs-tools")):
        path = "/etc/initramfs-tools/modules"
        text = _text(guest, path)
        listed = {line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")}
        missing = [m for m in modules if m not in listed]
        changes = [f"{path}: + {m}" for m in missing]
        if not dry:
            if missing:
                head = text if text.endswith("\n") or not text else text + "\n"
                _write(guest, path, head + "".join(f"{m}\n" for m in missing))
            _chroot(guest, ["update-initramfs", "-u", "-k", "all"])
        return [*changes, "initramfs regenerated (update-initramfs -u -k all)"]
    if resolve_in_root(guest, "/usr/bin/dracut") or resolve_in_root(guest, "/usr/sbin/dracut"):
        path = "/etc/dracut.conf.d/virtkit-virtio.conf"
        if not dry:
            _mkdir(guest, "/etc/dracut.conf.d")
            _write(guest, path, f'add_drivers+=" {" ".join(modules)} "\n')
            _chroot(guest, ["dracut", "-f", "--regenerate-all"])
        regenerated = "initramfs regenerated (dracut -f --regenerate-all)"
        return [f"{path}: add_drivers+= {' '.join(modules)}", regenerated]
    notes.append("neither initramfs-tools nor dracut in the guest: its initramfs was not changed")
    return []
