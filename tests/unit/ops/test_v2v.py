"""The V2V plan: names, device models, networks and conflicts decided before any disk data is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.images import v2vbuild
from tests.unit.images.v2vbuild import Disk
from virtkit.errors import ConflictError, RejectedError, SpecError
from virtkit.model import InstanceKind, InstanceRecord
from virtkit.ops.v2v import Options, plan, vm_name
from virtkit.store import SqliteStore

MiB = 1024 * 1024


def test_vm_names() -> None:
    assert vm_name("Web Server (prod)", Path("x.ova")) == "web-server-prod"
    assert vm_name(None, Path("/a/2024_Build.vmx")) == "vm-2024-build"
    assert vm_name("Übung", Path("x.ova")) == "bung"
    assert len(vm_name("x" * 200, Path("x.ova"))) == 63


def _ova(tmp_path: Path, text: str) -> Path:
    return v2vbuild.ova_package(tmp_path / "web.ova", text, {"d.vmdk": b"KDMV"})


def test_plan_maps_a_vmware_ova(root: Path, store: SqliteStore, tmp_path: Path) -> None:
    path = _ova(tmp_path, v2vbuild.vmware_ovf([Disk("d.vmdk", 64 * MiB)], firmware="efi"))
    planned = plan(root, store, path, Options())
    assert (planned.name, planned.cpus, planned.memory, planned.firmware) == (
        "web-server",
        2,
        384 * MiB,
        "uefi",
    )
    assert planned.devices == "emulated" and [d.bus for d in planned.disks] == ["ahci"]
    assert [(n.model, n.network, n.mac) for n in planned.nics] == [("e1000", None, "00:50:56:aa:bb:cc")]
    assert any("not connected" in note for note in planned.notes)
    overridden = plan(root, store, path, Options(name="w1", cpus=4, memory=256 * MiB, firmware="bios",
                                                 devices="virtio"))  # fmt: skip
    assert (overridden.name, overridden.cpus, overridden.memory, overridden.firmware) == (
        "w1",
        4,
        256 * MiB,
        "bios",
    )
    assert overridden.devices == "virtio" and [n.model for n in overridden.nics] == ["virtio"]


def test_plan_refusals(root: Path, store: SqliteStore, tmp_path: Path) -> None:
    path = _ova(tmp_path, v2vbuild.vmware_ovf([Disk("d.vmdk", 64 * MiB)]))
    with pytest.raises(SpecError, match="2 --network options for 1 NIC"):
        plan(root, store, path, Options(networks=("a", "b")))
    with pytest.raises(SpecError, match="more than this host has"):
        plan(root, store, path, Options(memory=8 * 1024**4))
    store.create(InstanceRecord(name="web-server", kind=InstanceKind.VM, image="0" * 64, arch="x86_64"))
    with pytest.raises(ConflictError, match="already exists"):
        plan(root, store, path, Options())
    vmx = tmp_path / "vm.vmx"
    vmx.write_text(v2vbuild.vmx([("scsi0:0", "vm.vmdk")]))
    with pytest.raises(RejectedError, match="not there"):
        plan(root, store, vmx, Options())
    empty = tmp_path / "empty.vmx"
    empty.write_text('numvcpus = "1"\n')
    with pytest.raises(SpecError, match="without disks"):
        plan(root, store, empty, Options())
