"""The VM driver: QEMU under KVM or TCG, driven through a pidfile and its QMP socket.

Modules: spec (VmSpec), plan (record + image -> VmSpec), argv (VmSpec -> command line, pure),
process (spawn, PID-reuse guard, kill), monitor (QMP), boot (readiness and boot phases), disk
(root disk overlay), volumes (block volumes as QEMU has them, pure), volumeplug (their descriptors,
hot-plug), driver (QemuDriver, the Driver contract).
"""

from virtkit.drivers.qemu.driver import QemuDriver
from virtkit.drivers.qemu.spec import DiskSpec, UefiSpec, VmSpec

__all__ = ["DiskSpec", "QemuDriver", "UefiSpec", "VmSpec"]
