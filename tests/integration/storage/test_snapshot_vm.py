"""A VM's snapshots for real: qcow2 internal snapshots made, applied and deleted by qemu-img on a
stopped VM's overlay disk (its backing image untouched), and through QMP on a running QEMU whose
disk sits under a throttle filter, as virtkit runs them; failures undone. Stateful ones: QEMU's
snapshot-save/-load jobs (state in the root disk, jobs dismissed, a device blocking migration
refused first). A guest resuming a counter is tested end to end in tests/e2e/test_snapshot_stateful.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.drivers.qemu.monitor import Monitor
from virtkit.errors import StateError, ToolError
from virtkit.storage.snapshots import Captured
from virtkit.storage.vmsnap import UNDO, VmBackend, root_nodes, state_sizes, tags

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"
)

MiB = 1 << 20


def write(path: Path, offset: int, pattern: int, length: int = 64 * 1024) -> None:
    """Guest data written into the disk through qemu-io, as a guest would."""
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", str(path)],
                   capture_output=True, check=True)  # fmt: skip


def holds(path: Path, offset: int, pattern: int, length: int = 64 * 1024) -> bool:
    done = subprocess.run(["qemu-io", "-r", "-U", "-f", "qcow2", "-c", f"read -P {pattern} {offset} {length}",
                           str(path)], capture_output=True, text=True, check=False)  # fmt: skip
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


@pytest.fixture
def vm(tmp_path: Path) -> VmBackend:
    """A VM directory: root.qcow2 over an image's base disk, a second disk, UEFI variables."""
    base = tmp_path / "image" / "disk.qcow2"
    base.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    write(base, 0, 0x11)
    home = tmp_path / "instances" / "v1"
    home.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                    str(home / "root.qcow2")], check=True)  # fmt: skip
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(home / "data.qcow2"), "8M"], check=True)
    (home / "efivars.fd").write_bytes(b"boot order A" + bytes(4096))
    os.chown(home / "efivars.fd", 4242, 4242)
    os.chmod(home / "efivars.fd", 0o600)
    return VmBackend(home, ("root.qcow2", "data.qcow2"), ("efivars.fd",))


def test_stopped_vm_snapshot_restore_delete(vm: VmBackend, tmp_path: Path) -> None:
    root, data, home = vm.home / "root.qcow2", vm.home / "data.qcow2", vm.home
    write(root, MiB, 0xAA)
    write(data, 0, 0xA1)
    into = tmp_path / "snap"
    into.mkdir()
    captured = vm.capture("s1", into)
    assert captured.disks == ("root.qcow2", "data.qcow2") and captured.files == ("efivars.fd",)
    assert captured.size > 0 and captured.notes == ()
    assert tags(root) == ["s1"] and tags(data) == ["s1"]
    assert tags(tmp_path / "image" / "disk.qcow2") == []  # the image's base disk is never written
    vm.check("s1", captured, into)

    write(root, MiB, 0xBB)
    write(root, 0, 0xBC)  # over what the base disk holds
    write(data, 0, 0xB1)
    (home / "efivars.fd").write_bytes(b"boot order B")
    vm.restore("s1", captured, into)
    assert holds(root, MiB, 0xAA) and holds(root, 0, 0x11) and holds(data, 0, 0xA1)
    assert (home / "efivars.fd").read_bytes() == b"boot order A" + bytes(4096)
    info = os.lstat(home / "efivars.fd")
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (4242, 4242, 0o600)  # still QEMU's user's
    assert tags(root) == ["s1"] and tags(data) == ["s1"]  # the undo marks are gone
    assert sorted(os.listdir(home)) == ["data.qcow2", "efivars.fd", "root.qcow2"]

    vm.remove("s1", captured)
    assert tags(root) == [] and tags(data) == []
    vm.remove("s1", captured)  # what is gone already is fine
    with pytest.raises(StateError, match="lost its data"):
        vm.check("s1", captured, into)


def test_a_failed_restore_is_undone(vm: VmBackend, tmp_path: Path) -> None:
    root = vm.home / "root.qcow2"
    into = tmp_path / "snap"
    into.mkdir()
    write(root, 0, 0xAA)
    captured = vm.capture("s1", into)
    write(root, 0, 0xBB)
    (into / "efivars.fd").unlink()  # the copy back fails after both disks were applied
    with pytest.raises(ToolError, match="cp failed"):
        vm.restore("s1", captured, into)
    assert holds(root, 0, 0xBB)  # rolled back to what it held before the restore
    assert tags(root) == ["s1"] and UNDO not in tags(vm.home / "data.qcow2")
    assert [n for n in os.listdir(vm.home) if ".vktmp." in n] == []


def test_a_failed_capture_leaves_no_internal_snapshot(vm: VmBackend, tmp_path: Path) -> None:
    (vm.home / "efivars.fd").unlink()
    into = tmp_path / "snap"
    into.mkdir()
    with pytest.raises(StateError, match=r"cannot read .*efivars\.fd"):
        vm.capture("s1", into)
    assert tags(vm.home / "root.qcow2") == [] and tags(vm.home / "data.qcow2") == []


def test_a_disk_replaced_by_a_symlink_is_refused(vm: VmBackend, tmp_path: Path) -> None:
    base = tmp_path / "image" / "disk.qcow2"
    (vm.home / "root.qcow2").unlink()
    (vm.home / "root.qcow2").symlink_to(base)  # what QEMU's user could do in its sticky directory
    into = tmp_path / "snap"
    into.mkdir()
    with pytest.raises(StateError, match="cannot open the disk"):
        vm.capture("s1", into)
    assert tags(base) == []


def test_a_diskless_vm_has_nothing_to_snapshot(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no disk of its own"):
        VmBackend(tmp_path, ()).capture("s1", tmp_path)


@contextlib.contextmanager
def qemu(vm: VmBackend, *extra: str) -> Iterator[Monitor]:
    """QEMU holding the VM's disks as virtkit attaches them (throttle over qcow2, virtio-blk), its
    vCPUs never started (-S): the block layer and the migration code are all this needs."""
    socket, pidfile = vm.home / "monitor.sock", vm.home / "pid"
    argv = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "64M", "-S", "-nodefaults",
            "-display", "none", "-daemonize", "-pidfile", str(pidfile),
            "-qmp", f"unix:{socket},server=on,wait=off"]  # fmt: skip
    for index, disk in enumerate(vm.disks):
        node = f"disk{index}"
        argv += [
            "-object", f"throttle-group,id=tg-{node}",
            "-blockdev",
            f"driver=qcow2,node-name={node}-image,file.driver=file,file.filename={vm.home / disk}",
            "-blockdev", f"driver=throttle,node-name={node},throttle-group=tg-{node},file={node}-image",
            "-device", f"virtio-blk-pci,drive={node},id={node}-dev",
        ]  # fmt: skip
    subprocess.run([*argv, *extra], check=True, timeout=30)
    try:
        yield Monitor(socket, name="v1", timeout=30)
    finally:
        pid = int(pidfile.read_text())
        os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def running(vm: VmBackend) -> Iterator[tuple[VmBackend, Monitor]]:
    with qemu(vm) as monitor:
        yield VmBackend(vm.home, vm.disks, vm.files, monitor), monitor


def test_running_vm_snapshot_through_qmp(running: tuple[VmBackend, Monitor], tmp_path: Path) -> None:
    live, monitor = running
    root = live.home / "root.qcow2"
    assert root_nodes(monitor, [root, live.home / "data.qcow2"]) == ["disk0", "disk1"]
    with pytest.raises(ToolError, match="another process"):  # QEMU holds the disk: qemu-img may not
        VmBackend(live.home, live.disks).capture("s0", tmp_path)
    into = tmp_path / "snap"
    into.mkdir()
    captured = live.capture("s1", into)
    assert "power cut" in captured.notes[0]
    assert tags(root) == ["s1"] and tags(live.home / "data.qcow2") == ["s1"]
    assert (into / "efivars.fd").read_bytes().startswith(b"boot order A")
    assert monitor.query_status() == "prelaunch"  # paused for the copy, then left as it was
    live.check("s1", captured, into)
    with pytest.raises(StateError, match="stop it first"):
        live.restore("s1", captured, into)
    live.forget("s1")  # as a crashed create's leftover: removed through QEMU
    assert tags(root) == []
    again = tmp_path / "again"
    again.mkdir()
    captured = live.capture("s2", again)
    assert tags(root) == ["s2"]
    live.remove("s2", captured)
    assert tags(root) == [] and tags(live.home / "data.qcow2") == []
    live.remove("s2", Captured(disks=live.disks))  # gone already: fine


def test_a_stateful_snapshot_keeps_the_vm_state_in_the_root_disk(
    running: tuple[VmBackend, Monitor], tmp_path: Path
) -> None:
    live, monitor = running
    root, data = live.home / "root.qcow2", live.home / "data.qcow2"
    into = tmp_path / "snap"
    into.mkdir()
    captured = live.capture_state("s1", into)
    assert captured.stateful and captured.disks == ("root.qcow2", "data.qcow2")
    assert state_sizes(root)["s1"] > 0 and state_sizes(data) == {"s1": 0}  # the state: in the root disk only
    assert (into / "efivars.fd").read_bytes().startswith(b"boot order A")  # copied with the vCPUs stopped
    assert monitor.query_status() == "prelaunch" and monitor.execute("query-jobs") == []  # job dismissed
    live.check("s1", captured, into)
    live.load_state("s1", captured)
    assert monitor.query_status() == "running"  # -S until now: loaded, then let go
    live.remove("s1", captured)  # through QEMU, state included
    assert state_sizes(root) == {} and state_sizes(data) == {}


def test_a_disk_only_snapshot_is_not_taken_for_a_stateful_one(
    running: tuple[VmBackend, Monitor], tmp_path: Path
) -> None:
    live, monitor = running
    into = tmp_path / "snap"
    into.mkdir()
    captured = live.capture("s0", into)
    with pytest.raises(StateError, match="lost its memory state"):
        live.check("s0", Captured(disks=captured.disks, files=captured.files, stateful=True), into)
    with pytest.raises(ToolError, match="Snapshot 'nope' does not exist"):
        live.load_state("nope", Captured(disks=live.disks, stateful=True))
    assert monitor.execute("query-jobs") == []  # a failed job is dismissed too


def test_a_device_that_blocks_migration_is_said(vm: VmBackend, tmp_path: Path) -> None:
    shm = Path("/dev/shm") / f"virtkit-test-{os.getpid()}"
    device = ["-object", f"memory-backend-file,id=shm0,share=on,mem-path={shm},size=1M",
              "-device", "ivshmem-plain,memdev=shm0"]  # fmt: skip
    try:
        with qemu(vm, *device) as monitor:
            backend = VmBackend(vm.home, vm.disks, vm.files, monitor)
            refused = "QEMU cannot save this VM's state: Migration is disabled"
            with pytest.raises(StateError, match=refused) as err:
                backend.capture_state("s1", tmp_path)
            assert "drop --stateful" in (err.value.hint or "")
            assert tags(vm.home / "root.qcow2") == [] and monitor.query_status() == "prelaunch"
    finally:
        shm.unlink(missing_ok=True)
