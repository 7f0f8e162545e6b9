"""Block volumes handed to QEMU: opened by virtkit for a start, plugged into and unplugged from a
running VM through its QMP monitor (the nodes and device are those volumes.py describes).

A volume's qcow2 file is opened here, as root, without following any symlink on its path, and
QEMU is given the descriptor: QEMU's unprivileged user never needs to reach the pool's directory
(a pool keeps its disks root's, mode 0600).

Plug, in one monitor session, each step undone if a later one fails (Monitor.add_volume): the
descriptor into a new fd set (`add-fd`, SCM_RIGHTS), the throttle group (`object-add`) when the
volume has limits, its block nodes (`blockdev-add`), the virtio-blk-pci device (`device_add`) on
the root port of its number. Unplug: `device_del` and a bounded wait for the guest to let the
disk go (DEVICE_DELETED), then the nodes (`blockdev-del`), the group (`object-del`) and the fd set
(`remove-fd`). A guest that does not answer in time keeps the disk, and everything under it.

Only q35 VMs with virtio devices can: virtio-mmio (microvm, arm's virt) has no hot-plug, nor has
the AHCI controller emulated devices get their volumes on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING

from virtkit.drivers.qemu import volumes
from virtkit.drivers.qemu.spec import VmSpec, VolumeSpec
from virtkit.errors import StateError
from virtkit.storage.openat2 import RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, openat2

if TYPE_CHECKING:  # the monitor's module loads asyncio: imported by whoever makes one
    from virtkit.drivers.qemu.monitor import Monitor

log = logging.getLogger(__name__)

UNPLUG_TIMEOUT = 20.0  # for the guest to let a disk go (ACPI eject under TCG: well under a second)
_FLAGS = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC
AT_FDCWD = -100  # an absolute path: every component of it checked


def _named(vol: VolumeSpec) -> str:
    return f"volume {vol.name!r} of pool {vol.pool!r}"


def open_volume(vol: VolumeSpec, vm: str) -> int:
    """The volume's file opened for reading and writing; StateError when it is gone or is not a
    plain file reached without symlinks (what the pool made)."""
    detach = f"detach it: virtkit volume detach {vol.pool} {vol.name} {vm}"
    try:
        fd = openat2(AT_FDCWD, vol.path, _FLAGS, resolve=RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    except FileNotFoundError:
        raise StateError(f"the disk of {_named(vol)} is gone: {vol.path}", hint=detach) from None
    except OSError as exc:
        why = "a symlink is on its path" if exc.errno == errno.ELOOP else exc.strerror
        raise StateError(f"cannot open the disk of {_named(vol)} at {vol.path}: {why}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StateError(f"the disk of {_named(vol)} at {vol.path} is not a plain file", hint=detach)
    return fd


@contextlib.contextmanager
def opened(spec: VmSpec) -> Iterator[dict[str, int]]:
    """The spec's volumes open for the body of the block, as {slot: descriptor} (closed at its end)."""
    fds: dict[str, int] = {}
    try:
        for vol in spec.volumes:
            fds[vol.device] = open_volume(vol, spec.name)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def check_pluggable(spec: VmSpec, vol: VolumeSpec, verb: str) -> None:
    """StateError unless `vol` can come or go (`verb`: "attach", "detach") while this VM runs."""
    stop = f"stop it first (virtkit stop {spec.name}), {verb} the volume, then start it"
    if spec.machine != "q35":
        raise StateError(
            f"{spec.name} is running on the {spec.machine} machine, whose disks (virtio-mmio) cannot be "
            "hot-plugged: its volumes change only while it is stopped",
            hint=stop,
        )
    if vol.bus != "virtio":
        raise StateError(
            f"{spec.name} has emulated devices: its volumes are SATA disks, which cannot be hot-plugged",
            hint=stop,
        )
    if volumes.volume_port(spec, vol) is None:
        ports = "it was started without any (by an older virtkit)"
        if spec.volume_ports:
            ports = f"it started with {spec.volume_ports} (rpv0-rpv{spec.volume_ports - 1})"
        raise StateError(
            f"{spec.name} has no hot-plug port for volume slot {vol.device}: {ports}",
            hint=f"{stop}: it starts with a port for every volume it has",
        )


def plug(spec: VmSpec, monitor: Monitor, vol: VolumeSpec) -> None:
    """Plug `vol` into the running VM; nothing of it is left when it fails."""
    check_pluggable(spec, vol, "attach")
    fd = open_volume(vol, spec.name)
    try:
        monitor.add_volume(fd, volumes.node_id(vol), volumes.throttle_group(vol),
                           volumes.block_nodes(vol, vol.path), volumes.device(spec, vol))  # fmt: skip
    finally:
        os.close(fd)  # QEMU holds its own copy now
    log.info("%s: %s plugged as %s on %s", spec.name, _named(vol), vol.device, volumes.volume_port(spec, vol))


def unplug(spec: VmSpec, monitor: Monitor, vol: VolumeSpec, timeout: float = UNPLUG_TIMEOUT) -> None:
    """Take `vol` out of the running VM once its guest lets it go, then its nodes, group and fd set.

    StateError when the guest did not let go within `timeout` s: then nothing is removed."""
    check_pluggable(spec, vol, "detach")
    if not monitor.device_del(volumes.node_id(vol), timeout):
        raise StateError(
            f"the guest of {spec.name} did not release the disk of {_named(vol)} within {timeout:g} s: "
            "it is still attached, and QEMU will remove it once the guest lets it go",
            hint="the guest needs ACPI PCI hot-plug (and to be fully booted): run the detach again "
            f"later, or stop it (virtkit stop {spec.name}) and detach then",
        )
    left = monitor.remove_volume(volumes.node_names(vol), volumes.group_id(vol), volumes.node_id(vol))
    if left:  # the disk is gone from the guest; what is left goes with QEMU at the latest
        log.warning("%s: left in QEMU after unplugging %s: %s", spec.name, vol.device, ", ".join(left))
    log.info("%s: %s unplugged from %s", spec.name, _named(vol), vol.device)
