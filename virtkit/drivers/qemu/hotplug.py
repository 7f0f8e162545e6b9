"""NICs plugged into and unplugged from a running VM, through its QMP monitor.

Plug, each step undone if a later one fails:

    tap      made on the host (owned by QEMU's user, enslaved to the network's bridge) and opened
    netdev   the open descriptor passed to QEMU over the monitor socket (`getfd`, SCM_RIGHTS) and
             a tap netdev made on it (`netdev_add ... fd=`): QEMU never opens /dev/net/tun
    device   the guest's NIC (`device_add`) with the stored MAC, on the PCIe root port of the NIC's
             number (argv._root_ports): the guest is told through ACPI and binds its driver

Unplug: `device_del`, then a bounded wait for the guest to let the device go (QEMU's DEVICE_DELETED
event); only then the netdev and the tap. A guest that does not answer in time keeps the NIC,
netdev and tap all there (the request stays pending in QEMU: asking again waits again).

Only q35 VMs can: microvm and arm's virt put virtio devices on virtio-mmio, which has no hot-plug.
"""

from __future__ import annotations

import contextlib
import logging
import os

from virtkit.drivers.qemu.argv import device_id, netdev_id, nic_driver, nic_port
from virtkit.drivers.qemu.monitor import Monitor
from virtkit.drivers.qemu.runas import RunAs
from virtkit.drivers.qemu.spec import NicSpec, VmSpec
from virtkit.errors import StateError, ToolError

log = logging.getLogger(__name__)

UNPLUG_TIMEOUT = 20.0  # for the guest to let a NIC go (ACPI eject under TCG: well under a second)


def check_pluggable(spec: VmSpec, verb: str) -> None:
    """StateError unless NICs can come and go while this VM runs (`verb`: "attach" or "detach")."""
    stop = f"stop it first (virtkit stop {spec.name}), {verb} the network, then start it"
    if spec.machine != "q35":
        bus = "virtio-mmio" if spec.mmio else spec.machine
        raise StateError(
            f"{spec.name} is running on the {spec.machine} machine, whose devices ({bus}) cannot be "
            "hot-plugged: its NICs change only while it is stopped",
            hint=stop,
        )
    if spec.pcie_ports == 0:
        raise StateError(
            f"{spec.name} was started without hot-plug ports (by an older virtkit): its NICs change "
            "only while it is stopped",
            hint=stop,
        )


def plug(spec: VmSpec, monitor: Monitor, nic: NicSpec, user: RunAs | None) -> None:
    """Plug `nic` into the running VM; nothing of it is left when it fails."""
    from virtkit.network import links

    check_pluggable(spec, "attach")
    port = nic_port(spec, nic.index)
    if port is None:
        raise StateError(
            f"{spec.name} has no hot-plug port for a NIC numbered {nic.index}: it started with "
            f"{spec.pcie_ports} (rp0-rp{spec.pcie_ports - 1})",
            hint=f"stop it first (virtkit stop {spec.name}): it starts with a port for every NIC it has",
        )
    links.delete(nic.device)  # a leftover of a VM killed with the host's virtkit
    owner, group = (user.uid, user.gid) if user else (0, None)
    links.create_tap(nic.device, bridge=nic.bridge, owner=owner, group=group)
    try:
        fd = links.open_tap(nic.device)
        try:
            monitor.add_tap(netdev_id(nic.device), fd)
        finally:
            os.close(fd)  # QEMU holds its own copy now
        try:
            # addr 0: the port's one slot (without it QEMU would take a port's other, unusable
            # slots when the first is taken, and the guest would never see the NIC)
            monitor.device_add(nic_driver(spec, nic.model), device_id(nic.device),
                               netdev=netdev_id(nic.device), mac=nic.mac, bus=port, addr="0")  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):
                monitor.netdev_del(netdev_id(nic.device))
            raise
    except BaseException:
        with contextlib.suppress(Exception):
            links.delete(nic.device)
        raise
    log.info("%s: NIC %s plugged on %s (%s)", spec.name, nic.device, port, nic.mac)


def unplug(spec: VmSpec, monitor: Monitor, nic: NicSpec, timeout: float = UNPLUG_TIMEOUT) -> None:
    """Take `nic` out of the running VM once its guest lets it go, then its netdev and tap.

    StateError when the guest did not let go within `timeout` s: then nothing is removed."""
    from virtkit.network import links

    check_pluggable(spec, "detach")
    if not monitor.device_del(device_id(nic.device), timeout):
        raise StateError(
            f"the guest of {spec.name} did not release its NIC {nic.device} within "
            f"{timeout:g} s: it is still attached, and QEMU will remove it once the guest lets it go",
            hint="the guest needs ACPI PCI hot-plug (and to be fully booted): run the detach again "
            f"later, or stop it (virtkit stop {spec.name}) and detach then",
        )
    try:
        monitor.netdev_del(netdev_id(nic.device))
    except ToolError as exc:  # the device is gone; the tap goes with QEMU at the latest
        log.warning("%s: netdev of %s left in QEMU: %s", spec.name, nic.device, exc)
    links.delete(nic.device)
    log.info("%s: NIC %s unplugged", spec.name, nic.device)
