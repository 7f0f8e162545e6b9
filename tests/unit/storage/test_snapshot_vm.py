"""Which of a VM's files its snapshots hold (from its saved runtime), and how the root block node
of each disk is found in what QMP says (canned answers: the real QEMU is in tests/integration)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from virtkit.drivers.base import InstancePaths, Runtime
from virtkit.drivers.qemu.spec import DiskSpec, UefiSpec, VmSpec
from virtkit.errors import StateError, StoreError, ToolError
from virtkit.model import InstanceKind, InstanceRecord
from virtkit.ops.snapshots import backend_for
from virtkit.storage.containersnap import ContainerBackend
from virtkit.storage.snapshots import Captured
from virtkit.storage.vmsnap import VmBackend, root_nodes


def saved_vm(paths: InstancePaths, tmp_path: Path) -> None:
    home = paths.dir
    home.mkdir(parents=True)
    disks = (
        DiskSpec(str(home / "root.qcow2")),
        DiskSpec(str(tmp_path / "pool" / "block" / "data.qcow2")),  # a pool volume: not the VM's own
        DiskSpec(str(tmp_path / "images" / "x" / "extra.qcow2"), readonly=True),
        DiskSpec(str(home / "scratch.img"), format="raw", bus="ahci"),
    )
    spec = VmSpec(
        name="v1", uuid="u", arch="x86_64", accel="tcg", machine="q35", cpus=1, memory=1 << 28,
        pidfile=str(home / "pid"), qmp_socket=str(home / "monitor.sock"),
        console_socket=str(home / "console.sock"), console_log=str(home / "console.log"),
        firmware="uefi", uefi=UefiSpec("/usr/share/OVMF/OVMF_CODE.fd", str(home / "efivars.fd")),
        disks=disks, seed=str(home / "seed.iso"),
    )  # fmt: skip
    paths.runtime.write_text(json.dumps(Runtime("vm", ["qemu"], spec.to_dict()).to_dict()))


def test_a_vm_snapshots_its_own_disks_and_uefi_variables(tmp_path: Path) -> None:
    paths = InstancePaths.of(tmp_path, "v1")
    saved_vm(paths, tmp_path)
    record = InstanceRecord(name="v1", kind=InstanceKind.VM)
    stopped = backend_for(record, paths, False)
    assert isinstance(stopped, VmBackend)
    assert stopped.disks == ("root.qcow2",) and stopped.files == ("scratch.img", "efivars.fd")
    assert stopped.monitor is None and stopped.freeze is False
    running = backend_for(record, paths, True)
    assert isinstance(running, VmBackend) and running.monitor is not None


def test_a_container_snapshots_its_upper_directory(tmp_path: Path) -> None:
    paths = InstancePaths.of(tmp_path, "c1")
    backend = backend_for(InstanceRecord(name="c1", kind=InstanceKind.CONTAINER), paths, True)
    assert isinstance(backend, ContainerBackend)
    assert (backend.upper, backend.work, backend.freeze) == (paths.dir / "upper", paths.dir / "work", True)


def test_an_unreadable_runtime_is_said(tmp_path: Path) -> None:
    paths = InstancePaths.of(tmp_path, "v1")
    with pytest.raises(StoreError, match="saved runtime of instance 'v1' cannot be read"):
        backend_for(InstanceRecord(name="v1", kind=InstanceKind.VM), paths, False)


class CannedQmp:
    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        return self.answers[command]


DISK = "/r/instances/v1/root.qcow2"


def _throttled(node: str, path: str) -> str:
    inner = {"driver": "qcow2", "file": {"driver": "file", "filename": path}}
    return "json:" + json.dumps({"throttle-group": f"tg-{node}", "driver": "throttle", "file": inner})


def test_the_root_node_is_the_filter_over_the_disk() -> None:
    qmp = CannedQmp({
        "query-named-block-nodes": [
            {"node-name": "disk0", "drv": "throttle", "file": _throttled("disk0", DISK)},
            {"node-name": "disk0-image", "drv": "qcow2", "file": DISK},
            {"node-name": "disk1", "drv": "throttle", "file": _throttled("disk1", "/other.qcow2")},
            {"node-name": "seed0", "drv": "raw", "file": "/r/instances/v1/seed.iso"},
        ],
        "query-block": [
            {"device": "", "inserted": {"node-name": "disk0", "drv": "throttle",
                                        "file": _throttled("disk0", DISK)}},
            {"device": "", "inserted": {"node-name": "disk1", "drv": "throttle",
                                        "file": _throttled("disk1", "/other.qcow2")}},
            {"device": "", "inserted": {"node-name": "seed0", "drv": "raw",
                                        "file": "/r/instances/v1/seed.iso"}},
            {"device": "cd0"},  # an empty drive
        ],
    })  # fmt: skip
    assert root_nodes(qmp, [Path(DISK), Path("/other.qcow2")]) == ["disk0", "disk1"]
    with pytest.raises(ToolError, match="0 block devices"):
        root_nodes(qmp, [Path("/r/instances/v1/seed.iso")])  # raw: no qcow2 node on it


def test_a_qcow2_root_node_and_a_filter_naming_its_child() -> None:
    qmp = CannedQmp({
        "query-named-block-nodes": [{"node-name": "img", "drv": "qcow2", "file": DISK}],
        "query-block": [
            {"inserted": {"node-name": "img", "drv": "qcow2", "file": DISK}},
            {"inserted": {"node-name": "f", "drv": "throttle",
                          "file": 'json:{"driver": "throttle", "file": "img"}'}},
        ],
    })  # fmt: skip
    with pytest.raises(ToolError, match="2 block devices"):  # both lead to it: ambiguous, refused
        root_nodes(qmp, [Path(DISK)])
    qmp.answers["query-block"] = [{"inserted": {"node-name": "img", "drv": "qcow2", "file": DISK}}]
    assert root_nodes(qmp, [Path(DISK)]) == ["img"]


def test_what_a_stateful_snapshot_would_not_hold_is_named(tmp_path: Path) -> None:
    paths = InstancePaths.of(tmp_path, "v1")
    saved_vm(paths, tmp_path)
    running = backend_for(InstanceRecord(name="v1", kind=InstanceKind.VM), paths, True)
    assert isinstance(running, VmBackend)
    assert running.others == (f"the disk {tmp_path / 'pool' / 'block' / 'data.qcow2'}",)


DISKS = ("root.qcow2",)


class JobQmp(CannedQmp):
    """Canned answers, and the jobs run (command, arguments) in `jobs`."""

    def __init__(self, answers: dict[str, object]) -> None:
        super().__init__(answers)
        self.jobs: list[tuple[str, dict[str, object]]] = []
        self.commands: list[str] = []

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        self.commands.append(command)
        return self.answers.get(command)

    def run_job(self, command: str, arguments: Mapping[str, object], timeout: float) -> None:
        self.jobs.append((command, dict(arguments)))


def _vm(tmp_path: Path, status: str = "running", **answers: object) -> JobQmp:
    (tmp_path / "root.qcow2").write_bytes(b"x" * 4096)
    chain = _throttled("disk0", str(tmp_path / "root.qcow2"))
    node = {"node-name": "disk0", "drv": "throttle", "file": chain}
    return JobQmp({
        "query-named-block-nodes": [node],
        "query-block": [{"inserted": node}],
        "query-status": {"status": status, "running": status == "running"},
        "query-migrate": {},
        **answers,
    })  # fmt: skip


def test_a_stateful_snapshot_is_qemus_snapshot_save_job(tmp_path: Path) -> None:
    qmp = _vm(tmp_path)
    captured = VmBackend(tmp_path, ("root.qcow2",), monitor=qmp).capture_state("s1", tmp_path)
    assert captured.stateful and captured.disks == ("root.qcow2",) and captured.notes == ()
    ((command, arguments),) = qmp.jobs
    assert command == "snapshot-save" and str(arguments.pop("job-id")).startswith("virtkit-save-")
    assert arguments == {"tag": "s1", "vmstate": "disk0", "devices": ["disk0"]}  # the root disk's root node
    assert "stop" not in qmp.commands  # nothing to copy: QEMU pauses the vCPUs itself while it saves


def test_loading_lets_the_vcpus_run(tmp_path: Path) -> None:
    for status, resumed in (("running", False), ("prelaunch", True), ("paused", True)):
        qmp = _vm(tmp_path, status)
        backend = VmBackend(tmp_path, ("root.qcow2",), monitor=qmp)
        backend.load_state("s1", Captured(("root.qcow2",), stateful=True))
        assert [(c, a["tag"], a["devices"]) for c, a in qmp.jobs] == [("snapshot-load", "s1", ["disk0"])]
        assert ("cont" in qmp.commands) is resumed
    with pytest.raises(StateError, match="holds no memory state"):
        VmBackend(tmp_path, ("root.qcow2",), monitor=qmp).load_state("s1", Captured(("root.qcow2",)))


def test_what_qemu_cannot_save_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    reason = "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"
    blocked = _vm(tmp_path, **{"query-migrate": {"blocked-reasons": [reason]}})
    cases = [
        (VmBackend(tmp_path, ("root.qcow2",)), "this one is stopped"),
        (VmBackend(tmp_path, (), monitor=_vm(tmp_path)), "this VM has none"),
        (VmBackend(tmp_path, ("root.qcow2",), monitor=_vm(tmp_path), others=("the block volume p/v",)),
         "the block volume p/v would not go back with its memory"),
        (VmBackend(tmp_path, DISKS, monitor=blocked), f"QEMU cannot save this VM's state: {reason}"),
    ]  # fmt: skip
    for backend, needle in cases:
        with pytest.raises(StateError, match=re.escape(needle)):
            backend.capture_state("s1", tmp_path)
        assert not isinstance(backend.monitor, JobQmp) or backend.monitor.jobs == []
    with pytest.raises(StateError, match="stateful snapshots of containers are not supported"):
        ContainerBackend(tmp_path / "upper", tmp_path / "work").capture_state("s1", tmp_path)
