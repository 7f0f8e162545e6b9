"""devices.* checks: tun, vhost-net, IOMMU."""

from __future__ import annotations

from pathlib import Path

from hosttree import MakeTree

from virtkit.host import Check, Status
from virtkit.host.devices import device_checks, probe_devices


def checks(tree_root: Path, vendor: str = "GenuineIntel") -> dict[str, Check]:
    return {c.id: c for c in device_checks(probe_devices(tree_root), vendor)}


def test_all_present(make_tree: MakeTree) -> None:
    got = checks(make_tree(iommu="groups"))
    assert [got[i].status for i in ("devices.tun", "devices.vhost-net", "devices.iommu")] == [Status.PASS] * 3
    assert got["devices.iommu"].details == {"acpi_tables": ["DMAR"], "groups": 3}


def test_missing_tun_and_vhost_warn_with_modprobe(make_tree: MakeTree) -> None:
    got = checks(make_tree(tun=False, vhost_net=False))
    assert got["devices.tun"].status is Status.WARN
    assert got["devices.tun"].remedy is not None and "modprobe tun" in got["devices.tun"].remedy
    assert got["devices.vhost-net"].status is Status.WARN
    assert got["devices.vhost-net"].remedy == "modprobe vhost_net"


def test_iommu_in_firmware_but_not_enabled(make_tree: MakeTree) -> None:
    intel = checks(make_tree(iommu="tables"))["devices.iommu"]
    assert intel.status is Status.WARN
    assert intel.remedy is not None and "intel_iommu=on" in intel.remedy
    amd = checks(make_tree(iommu="tables"), vendor="AuthenticAMD")["devices.iommu"]
    assert amd.remedy is not None and "amd_iommu=on" in amd.remedy


def test_no_iommu_is_only_info(make_tree: MakeTree) -> None:
    iommu = checks(make_tree(iommu="none"))["devices.iommu"]
    assert iommu.status is Status.INFO
    assert "passthrough" in iommu.summary
