"""A running VM's devices changed through QMP, for QemuDriver (driver.py): NICs plugged and
unplugged (hotplug.py), block volumes checked, plugged and unplugged (volumeplug.py), internal
snapshots of an attached volume; each time the boot record's spec is kept as QEMU now has it.
`VmAccess` holds what both halves of the driver reach a VM through: its boot record, its running
QEMU, its monitor.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

from virtkit.drivers.base import InstancePaths
from virtkit.drivers.qemu import process, volumeplug
from virtkit.drivers.qemu.boot import BootRecord
from virtkit.drivers.qemu.confinement import user_of
from virtkit.drivers.qemu.plan import VmFiles, nic_spec
from virtkit.drivers.qemu.volumes import node_id, volume_spec
from virtkit.errors import StateError
from virtkit.model import InstanceRecord, Nic, VolumeAttachment

if TYPE_CHECKING:  # its module loads asyncio and qemu.qmp: imported where a monitor is made
    from virtkit.drivers.qemu.monitor import Monitor

# QEMU run states in which the guest does not run
PAUSED = {"paused", "suspended", "prelaunch", "inmigrate", "postmigrate", "finish-migrate",
          "save-vm", "restore-vm", "debug", "colo"}  # fmt: skip


class VmAccess:
    """The look-ups of a VM both halves of the driver use."""

    @staticmethod
    def _boot(record: InstanceRecord, files: VmFiles) -> BootRecord:
        boot = BootRecord.load(files.boot)
        if boot is None or boot.spec.uuid != record.uuid:
            raise StateError(f"{record.name} was not started", hint=f"virtkit start {record.name}")
        return boot

    def _running(self, record: InstanceRecord, paths: InstancePaths) -> int:
        pid = process.running_pid(paths.pidfile, record.uuid)
        if pid is None:
            raise StateError(f"{record.name} is not running", hint=f"virtkit start {record.name}")
        return pid

    def _monitor(self, record: InstanceRecord, paths: InstancePaths, timeout: float = 10.0) -> Monitor:
        from virtkit.drivers.qemu.monitor import Monitor

        return Monitor(paths.monitor, name=record.name, timeout=timeout)


class LiveDevices(VmAccess):
    """NICs and volumes of a running VM (QemuDriver's half that changes devices live)."""

    def plug_nic(self, record: InstanceRecord, paths: InstancePaths, nic: Nic, bridge: str) -> None:
        """Hot-plug `nic` (hotplug.py); the boot record's spec then lists it, as QEMU now has it."""
        from virtkit.drivers.qemu import hotplug

        self._running(record, paths)
        files = VmFiles(paths)
        boot = self._boot(record, files)
        spec = boot.spec
        hotplug.check_pluggable(spec, "attach")
        wanted = replace(nic_spec(record.name, nic, spec.devices, spec.machine), bridge=bridge)
        hotplug.plug(spec, self._monitor(record, paths), wanted, user_of(spec))
        boot.spec = replace(spec, nics=(*[n for n in spec.nics if n.device != nic.device], wanted))
        boot.save(files.boot)

    def unplug_nic(self, record: InstanceRecord, paths: InstancePaths, nic: Nic) -> None:
        """Hot-unplug `nic` (hotplug.py: a bounded wait for the guest); a stopped VM's tap is just
        deleted (what a stopped VM has of a NIC)."""
        from virtkit.drivers.qemu import hotplug
        from virtkit.network import links

        if process.running_pid(paths.pidfile, record.uuid) is None:
            links.delete(nic.device)
            return
        files = VmFiles(paths)
        boot = self._boot(record, files)
        spec = boot.spec
        hotplug.check_pluggable(spec, "detach")
        monitor = self._monitor(record, paths)
        if monitor.query_status() in PAUSED:
            raise StateError(
                f"{record.name} is paused: its guest must run to let a NIC go",
                hint=f"resume it first: virtkit resume {record.name}",
            )
        plugged = next((n for n in spec.nics if n.device == nic.device), None)
        hotplug.unplug(spec, monitor, plugged or nic_spec(record.name, nic, spec.devices, spec.machine))
        boot.spec = replace(spec, nics=tuple(n for n in spec.nics if n.device != nic.device))
        boot.save(files.boot)

    def attach_volume(
        self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment, *, live: bool
    ) -> None:
        """Check that the VM can take `volume` (a block volume whose disk virtkit can open: its next
        start gets it; while the VM runs, one it can take live, so that a refusal comes before
        anything is recorded); with `live`, hot-plug it into the running VM (volumeplug.py),
        which the boot record's spec then lists."""
        os.close(volumeplug.open_volume(volume_spec(volume, "virtio"), record.name))
        running = process.running_pid(paths.pidfile, record.uuid) is not None
        if not (live or running):
            return
        self._running(record, paths)
        files = VmFiles(paths)
        boot = self._boot(record, files)
        spec = boot.spec
        vol = volume_spec(volume, spec.devices)
        volumeplug.check_pluggable(spec, vol, "attach")
        if any(other.device == vol.device for other in spec.volumes):
            raise StateError(f"{record.name} already has a volume in slot {vol.device}")
        if not live:
            return
        volumeplug.plug(spec, self._monitor(record, paths), vol)
        boot.spec = replace(spec, volumes=(*spec.volumes, vol))
        boot.save(files.boot)

    def snapshot_volume(self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment,
                        name: str, *, delete: bool = False) -> None:  # fmt: skip
        """Take (with `delete`: delete) internal snapshot `name` of `volume`'s disk in the running
        VM, by its QEMU, which holds the disk (blockdev-snapshot-internal-sync on the volume's top
        node: QEMU flushes the guest's writes to it first)."""
        self._running(record, paths)
        spec = self._boot(record, VmFiles(paths)).spec
        vol = next((v for v in spec.volumes if v.device == volume.device), None)
        if vol is None:
            raise StateError(f"{record.name}'s QEMU does not hold volume {volume.pool}/{volume.name} "
                             "(it gets it at its next start)",
                             hint=f"stop {record.name}, then retry")  # fmt: skip
        command = "blockdev-snapshot-delete-internal-sync" if delete else "blockdev-snapshot-internal-sync"
        self._monitor(record, paths, timeout=60.0).execute(command, {"device": node_id(vol), "name": name})

    def detach_volume(self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment) -> None:
        """Hot-unplug `volume` from the running VM (a bounded wait for the guest to let it go); a
        stopped VM has nothing of it to remove."""
        if process.running_pid(paths.pidfile, record.uuid) is None:
            return
        files = VmFiles(paths)
        boot = self._boot(record, files)
        spec = boot.spec
        monitor = self._monitor(record, paths)
        vol = next((v for v in spec.volumes if v.device == volume.device), None)
        if vol is None:
            vol = volume_spec(volume, spec.devices)
            if node_id(vol) not in monitor.peripherals():
                return  # this boot never had it
        if monitor.query_status() in PAUSED:
            raise StateError(
                f"{record.name} is paused: its guest must run to let a disk go",
                hint=f"resume it first: virtkit resume {record.name}",
            )
        volumeplug.unplug(spec, monitor, vol)
        boot.spec = replace(spec, volumes=tuple(v for v in spec.volumes if v.device != vol.device))
        boot.save(files.boot)
