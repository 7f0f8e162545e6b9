"""Block volumes handed to QEMU (volumeplug.py, QemuDriver.start/attach_volume/detach_volume) against
a fake monitor: the disk opened without symlinks and passed as a descriptor at start, the checks of
an attach for the next start, hot-plug and unplug of a running q35 VM and the boot record kept in
step, the refusals (microvm, emulated devices, no port, a paused guest) and a guest that does not
let go. Real QEMU: tests/integration/drivers/qemu/test_volume_monitor.py; a real guest:
tests/e2e/test_vm_volumes.py."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.unit.drivers.qemu.test_hotplug import UUID, _spec
from virtkit.drivers.base import InstancePaths, Runtime
from virtkit.drivers.qemu import QemuDriver, process, volumeplug, volumes
from virtkit.drivers.qemu.argv import build_argv
from virtkit.drivers.qemu.boot import BootRecord
from virtkit.drivers.qemu.plan import VmFiles
from virtkit.drivers.qemu.spec import VmSpec, VolumeSpec
from virtkit.errors import SpecError, StateError, ToolError
from virtkit.model import InstanceKind, InstanceRecord, VolumeAttachment, VolumeType


@dataclass
class FakeMonitor:
    """What volumeplug.py and the driver ask of a Monitor; `fail` names the call that raises."""

    fail: str | None = None
    lets_go: bool = True
    status: str = "running"
    devices: list[str] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.fail == name:
            raise ToolError(f"QEMU refused {name}")

    def add_volume(self, fd: int, opaque: str, group: Any, nodes: Any, device: Any) -> int:
        os.fstat(fd)  # an open descriptor, of the volume's file
        self._call("add_volume", os.readlink(f"/proc/self/fd/{fd}"), opaque, group, nodes, device)
        return 7

    def device_del(self, device: str, wait: float) -> bool:
        self._call("device_del", device)
        return self.lets_go

    def remove_volume(self, nodes: list[str], group: str, opaque: str) -> list[str]:
        self._call("remove_volume", nodes, group, opaque)
        return []

    def peripherals(self) -> list[str]:
        return self.devices

    def query_status(self) -> str:
        return self.status

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _attachment(tmp_path: Path, device: str = "vol1", **limits: str) -> VolumeAttachment:
    disk = tmp_path / "pool" / f"{device}.qcow2"
    disk.parent.mkdir(exist_ok=True)
    disk.write_bytes(b"QFI\xfb")
    return VolumeAttachment(pool="fast", name="data", type=VolumeType.BLOCK, format="qcow2",
                            source=str(disk), device=device, limits=limits)  # fmt: skip


@pytest.fixture
def vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[QemuDriver, InstanceRecord, InstancePaths]:
    """A VM whose QEMU `running` (a fake pid), its boot record on q35 with volume ports."""
    paths = InstancePaths.of(tmp_path / "root", "vm1")
    paths.dir.mkdir(parents=True)
    _boot(paths, _spec(volume_ports=4))
    monkeypatch.setattr(process, "running_pid", lambda pidfile, uuid: 4242)
    return QemuDriver(), InstanceRecord(name="vm1", uuid=UUID, kind=InstanceKind.VM), paths


def _boot(paths: InstancePaths, spec: VmSpec) -> None:
    BootRecord(spec, started_at=1.0, console_offset=0, log_offset=0).save(VmFiles(paths).boot)


def _booted(paths: InstancePaths) -> tuple[VolumeSpec, ...]:
    boot = BootRecord.load(VmFiles(paths).boot)
    assert boot is not None
    return boot.spec.volumes


def _monitor(driver: QemuDriver, monkeypatch: pytest.MonkeyPatch, **state: Any) -> FakeMonitor:
    monitor = FakeMonitor(**state)
    monkeypatch.setattr(driver, "_monitor", lambda record, paths, timeout=10.0: monitor)
    return monitor


# --- opening the disk --------------------------------------------------------------------------


def test_the_disk_is_opened_read_write_and_never_through_a_symlink(tmp_path: Path) -> None:
    vol = volumes.volume_spec(_attachment(tmp_path), "virtio")
    fd = volumeplug.open_volume(vol, "vm1")
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == vol.path and os.get_blocking(fd)
        assert os.get_inheritable(fd) is False  # only spawn's pass_fds hand it on
    finally:
        os.close(fd)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "pool")
    for path, said in ((link / "vol1.qcow2", "a symlink is on its path"), (tmp_path, "Is a directory"),
                       (Path("/dev/null"), "not a plain file"),
                       (tmp_path / "gone.qcow2", "is gone")):  # fmt: skip
        with pytest.raises(StateError, match=said) as caught:
            volumeplug.open_volume(VolumeSpec("vol1", "fast", "data", str(path)), "vm1")
        assert "volume 'data' of pool 'fast'" in str(caught.value)
    with pytest.raises(StateError) as caught:
        volumeplug.open_volume(VolumeSpec("vol1", "fast", "data", str(tmp_path / "gone")), "vm1")
    assert caught.value.hint == "detach it: virtkit volume detach fast data vm1"


def test_start_passes_each_disk_as_a_descriptor(
    vm: tuple[QemuDriver, InstanceRecord, InstancePaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, record, paths = vm
    vol = volumes.volume_spec(_attachment(tmp_path, "vol2"), "virtio")
    spec = _spec(volume_ports=4, volumes=(vol,), pidfile=str(paths.pidfile), qmp_socket=str(paths.monitor))
    runtime = Runtime(kind="vm", argv=build_argv(spec), config=spec.to_dict())
    spawned: dict[str, Any] = {}

    def spawn(argv: list[str], log: Path, **kwargs: Any) -> int:
        fds = list(kwargs["pass_fds"])
        spawned.update(argv=argv, targets=[os.readlink(f"/proc/self/fd/{fd}") for fd in fds], fds=fds)
        return 4242

    monkeypatch.setattr(process, "running_pid", lambda pidfile, uuid: None)
    monkeypatch.setattr(process, "spawn", spawn)
    monkeypatch.setattr(QemuDriver, "_wait_up", lambda *args: None)
    driver.start(record, runtime, paths)
    (fd,) = spawned["fds"]
    assert spawned["targets"] == [vol.path]
    assert f"fd={fd},set=2,opaque=vk-vol2" in spawned["argv"]
    assert not [a for a in spawned["argv"] if vol.path in a]  # QEMU never opens it by name
    with pytest.raises(OSError):
        os.fstat(fd)  # closed again once QEMU has its copy


# --- attaching ---------------------------------------------------------------------------------


def test_an_attach_for_the_next_start_checks_the_volume(
    vm: tuple[QemuDriver, InstanceRecord, InstancePaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, record, paths = vm
    monitor = _monitor(driver, monkeypatch)
    driver.attach_volume(record, paths, _attachment(tmp_path), live=False)
    directory = _attachment(tmp_path).model_copy(update={"type": VolumeType.FILESYSTEM, "format": "dir"})
    with pytest.raises(SpecError, match="no virtiofs yet"):
        driver.attach_volume(record, paths, directory, live=False)
    gone = _attachment(tmp_path).model_copy(update={"source": str(tmp_path / "nothing.qcow2")})
    with pytest.raises(StateError, match="is gone"):
        driver.attach_volume(record, paths, gone, live=False)
    assert monitor.calls == [] and _booted(paths) == ()


def test_a_hot_plug_hands_qemu_the_volume_and_the_boot_record_lists_it(
    vm: tuple[QemuDriver, InstanceRecord, InstancePaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, record, paths = vm
    monitor = _monitor(driver, monkeypatch)
    attachment = _attachment(tmp_path, "vol1", **{"limits.iops": "100"})
    driver.attach_volume(record, paths, attachment, live=True)
    vol = volumes.volume_spec(attachment, "virtio")
    ((name, args),) = monitor.calls
    device = volumes.device(_spec(volume_ports=4), vol)
    nodes = volumes.block_nodes(vol, vol.path)
    group = volumes.throttle_group(vol)
    assert (name, args) == ("add_volume", (attachment.source, "vk-vol1", group, nodes, device))
    assert args[4]["bus"] == "rpv1" and args[2]["limits"] == {"iops-total": 100}
    assert _booted(paths) == (vol,)
    with pytest.raises(StateError, match="already has a volume in slot vol1"):
        driver.attach_volume(record, paths, attachment, live=True)


@pytest.mark.parametrize(
    ("spec", "device", "said"),
    [
        (_spec("microvm"), "vol0", "microvm machine, whose disks \\(virtio-mmio\\) cannot be hot-plugged"),
        (_spec(devices="emulated"), "vol0", "emulated devices: its volumes are SATA disks"),
        (_spec(volume_ports=4), "vol4", r"no hot-plug port for volume slot vol4: it started with 4 \(rpv0-"),
        (_spec(), "vol0", "started without any"),
    ],
)
def test_vms_that_cannot_take_a_disk_live_are_refused_untouched(
    vm: tuple[QemuDriver, InstanceRecord, InstancePaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    spec: VmSpec, device: str, said: str,
) -> None:  # fmt: skip
    driver, record, paths = vm
    _boot(paths, spec)
    monitor = _monitor(driver, monkeypatch)
    for live in (False, True):  # the check before anything is recorded, then the hot-plug itself
        with pytest.raises(StateError, match=said) as caught:
            driver.attach_volume(record, paths, _attachment(tmp_path, device), live=live)
        assert caught.value.hint is not None and "stop it first (virtkit stop vm1)" in caught.value.hint
    assert monitor.calls == [] and _booted(paths) == ()
    monkeypatch.setattr(process, "running_pid", lambda pidfile, uuid: None)
    driver.attach_volume(record, paths, _attachment(tmp_path, device), live=False)  # stopped: its next start


def test_a_failed_hot_plug_leaves_the_boot_record(
    vm: tuple[QemuDriver, InstanceRecord, InstancePaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, record, paths = vm
    _monitor(driver, monkeypatch, fail="add_volume")
    with pytest.raises(ToolError):
        driver.attach_volume(record, paths, _attachment(tmp_path), live=True)
    assert _booted(paths) == ()


def test_a_hot_plug_into_a_stopped_vm_is_refused(
    vm: tuple[QemuDriver, InstanceRecord, InstancePaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, record, paths = vm
    monkeypatch.setattr(process, "running_pid", lambda pidfile, uuid: None)
    with pytest.raises(StateError, match="is not running"):
        driver.attach_volume(record, paths, _attachment(tmp_path), live=True)


# --- detaching ---------------------------------------------------------------------------------


def test_a_detach_waits_for_the_guest_then_removes_nodes_group_and_fd_set(
    vm: tuple[QemuDriver, InstanceRecord, InstancePaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, record, paths = vm
    attachment = _attachment(tmp_path, "vol2", **{"limits.bps": "1000"})
    _boot(paths, _spec(volume_ports=4, volumes=(volumes.volume_spec(attachment, "virtio"),)))
    monitor = _monitor(driver, monkeypatch)
    driver.detach_volume(record, paths, attachment)
    assert monitor.calls == [
        ("device_del", ("vk-vol2",)),
        ("remove_volume", (["vk-vol2", "vk-vol2-qcow2", "vk-vol2-file"], "vk-vol2-tg", "vk-vol2")),
    ]
    assert _booted(paths) == ()


def test_a_guest_that_does_not_let_go_keeps_the_disk(
    vm: tuple[QemuDriver, InstanceRecord, InstancePaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, record, paths = vm
    attachment = _attachment(tmp_path, "vol0")
    _boot(paths, _spec(volume_ports=4, volumes=(volumes.volume_spec(attachment, "virtio"),)))
    monitor = _monitor(driver, monkeypatch, lets_go=False)
    with pytest.raises(StateError, match="did not release the disk of volume 'data' of pool") as raised:
        driver.detach_volume(record, paths, attachment)
    assert raised.value.hint is not None and "run the detach again" in raised.value.hint
    assert monitor.names == ["device_del"] and len(_booted(paths)) == 1
    monitor.status, monitor.lets_go = "paused", True
    with pytest.raises(StateError, match="is paused") as caught:
        driver.detach_volume(record, paths, attachment)
    assert caught.value.hint == "resume it first: virtkit resume vm1" and monitor.names == ["device_del"]


def test_a_detach_from_a_vm_that_does_not_have_the_disk_does_nothing(
    vm: tuple[QemuDriver, InstanceRecord, InstancePaths], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, record, paths = vm
    monitor = _monitor(driver, monkeypatch)
    driver.detach_volume(record, paths, _attachment(tmp_path))  # this boot never had it
    monkeypatch.setattr(process, "running_pid", lambda pidfile, uuid: None)
    driver.detach_volume(record, paths, _attachment(tmp_path))  # stopped: nothing of it in QEMU
    assert monitor.calls == []
    # on microvm a disk the VM started with stays until it stops
    attachment = _attachment(tmp_path, "vol0")
    _boot(paths, _spec("microvm", volumes=(volumes.volume_spec(attachment, "virtio"),)))
    monkeypatch.setattr(process, "running_pid", lambda pidfile, uuid: 4242)
    with pytest.raises(StateError, match="cannot be hot-plugged") as caught:
        driver.detach_volume(record, paths, attachment)
    assert caught.value.hint == "stop it first (virtkit stop vm1), detach the volume, then start it"
    assert monitor.calls == [] and len(_booted(paths)) == 1
