"""Device nodes and firmware features VMs use: /dev/net/tun, /dev/vhost-net and the IOMMU.

- tun: tap interfaces, how a VM's NIC joins a bridge;
- vhost-net: moves virtio-net packet processing into the kernel (faster than QEMU userspace);
- IOMMU: needed only to pass a PCI device through to a guest. The firmware announces it with an
  ACPI table (DMAR on Intel, IVRS on AMD, IORT on arm64); the kernel shows it as iommu_groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from virtkit.host.checks import Check, JsonValue, Status

IOMMU_TABLES = ("DMAR", "IVRS", "IORT")


@dataclass(frozen=True)
class DeviceState:
    tun: bool
    vhost_net: bool
    iommu_tables: tuple[str, ...]
    iommu_groups: int


def _count_entries(path: Path) -> int:
    try:
        return sum(1 for _ in path.iterdir())
    except OSError:
        return 0


def probe_devices(sysroot: Path) -> DeviceState:
    tables = sysroot / "sys/firmware/acpi/tables"
    return DeviceState(
        tun=(sysroot / "dev/net/tun").exists(),
        vhost_net=(sysroot / "dev/vhost-net").exists(),
        iommu_tables=tuple(t for t in IOMMU_TABLES if (tables / t).exists()),
        iommu_groups=_count_entries(sysroot / "sys/kernel/iommu_groups"),
    )


def device_checks(state: DeviceState, cpu_vendor: str = "") -> list[Check]:
    return [_tun_check(state), _vhost_check(state), _iommu_check(state, cpu_vendor)]


def _tun_check(state: DeviceState) -> Check:
    if state.tun:
        return Check("devices.tun", Status.PASS, "/dev/net/tun exists: VMs can have tap NICs on bridges")
    return Check(
        "devices.tun",
        Status.WARN,
        "/dev/net/tun is missing: VMs cannot have tap NICs (only QEMU user networking)",
        remedy="modprobe tun (in a container: pass /dev/net/tun through)",
    )


def _vhost_check(state: DeviceState) -> Check:
    if state.vhost_net:
        return Check("devices.vhost-net", Status.PASS, "/dev/vhost-net exists: virtio-net runs in the kernel")
    return Check(
        "devices.vhost-net",
        Status.WARN,
        "/dev/vhost-net is missing: virtio-net packets go through QEMU userspace (slower networking)",
        remedy="modprobe vhost_net",
    )


def _iommu_check(state: DeviceState, cpu_vendor: str) -> Check:
    details: dict[str, JsonValue] = {"acpi_tables": list(state.iommu_tables), "groups": state.iommu_groups}
    if state.iommu_groups:
        return Check(
            "devices.iommu",
            Status.PASS,
            f"IOMMU active ({state.iommu_groups} groups): PCI devices can be passed through to guests",
            details=details,
        )
    if state.iommu_tables:
        param = "amd_iommu=on" if "AMD" in cpu_vendor.upper() else "intel_iommu=on"
        return Check(
            "devices.iommu",
            Status.WARN,
            f"the firmware has an IOMMU ({', '.join(state.iommu_tables)}) but the kernel does not use it: "
            "no PCI passthrough",
            remedy=f"add {param} iommu=pt to the kernel command line and reboot",
            details=details,
        )
    return Check(
        "devices.iommu",
        Status.INFO,
        "no IOMMU: PCI passthrough unavailable (ordinary VMs do not need it)",
        remedy="enable VT-d / AMD-Vi in the BIOS/UEFI setup if you need PCI passthrough",
        details=details,
    )
