"""NIC hot-plug of running VMs (hotplug.py, QemuDriver.plug_nic/unplug_nic) against a fake monitor
and fake host links: the order of the steps, the undo of each when a later one fails, the refusals
(microvm, no port, a paused guest), a guest that does not let go, and the boot record kept in step.
Real QEMU: tests/integration/drivers/qemu/test_hotplug_monitor.py; a real guest:
tests/e2e/test_network_hotplug.py."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from virtkit.drivers.base import InstancePaths
from virtkit.drivers.qemu import QemuDriver, hotplug, process
from virtkit.drivers.qemu.boot import BootRecord
from virtkit.drivers.qemu.plan import HOTPLUG_PORTS, VmFiles, nic_spec, pcie_ports
from virtkit.drivers.qemu.spec import NicSpec, VmSpec
from virtkit.errors import SpecError, StateError, ToolError
from virtkit.model import InstanceKind, InstanceRecord, Nic
from virtkit.network import links

MiB = 1024 * 1024
UUID = "5b0d2f7e-3c4a-4f1e-9a53-0d6c1e2b7f10"
NIC = Nic(network="lan", mac="52:54:00:12:34:56", ip="10.20.30.5", device="vk5b0d2f7en1", inner="eth1")


def _spec(machine: str = "q35", **changes: object) -> VmSpec:
    values: dict[str, Any] = dict(
        name="vm1", uuid=UUID, arch="x86_64", accel="tcg", machine=machine, cpus=1, memory=256 * MiB,
        pidfile="/x/pid", qmp_socket="/x/monitor.sock", console_socket="/x/console.sock",
        console_log="/x/console.log", pcie_ports=HOTPLUG_PORTS if machine == "q35" else 0,
    )  # fmt: skip
    values.update(changes)
    return VmSpec(**values)


def _nic(**changes: object) -> NicSpec:
    return replace(nic_spec("vm1", NIC, "virtio", "q35"), **changes)  # type: ignore[arg-type]


@dataclass
class FakeMonitor:
    """What hotplug.py asks of a Monitor; `fail` names the call that raises ToolError."""

    fail: str | None = None
    lets_go: bool = True
    status: str = "running"
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.fail == name:
            raise ToolError(f"QEMU refused {name}")

    def add_tap(self, netdev: str, fd: int) -> None:
        os.fstat(fd)  # an open descriptor
        self._call("add_tap", netdev)

    def device_add(self, driver: str, device: str, **properties: object) -> None:
        self._call("device_add", driver, device, properties)

    def netdev_del(self, netdev: str) -> None:
        self._call("netdev_del", netdev)

    def device_del(self, device: str, wait: float) -> bool:
        self._call("device_del", device)
        return self.lets_go

    def query_status(self) -> str:
        return self.status

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@dataclass
class FakeLinks:
    """The host's interfaces as hotplug.py changes them, and the tap descriptors it opened."""

    fail: str | None = None
    taps: dict[str, tuple[str, int, int | None]] = field(default_factory=dict)
    opened: list[int] = field(default_factory=list)

    def create_tap(self, name: str, *, bridge: str, owner: int, group: int | None = None) -> None:
        if self.fail == "create_tap":
            raise ToolError("cannot create tap")
        self.taps[name] = (bridge, owner, group)

    def open_tap(self, name: str) -> int:
        if self.fail == "open_tap":
            raise ToolError("cannot open tap")
        assert name in self.taps
        fd = os.open(os.devnull, os.O_RDONLY)
        self.opened.append(fd)
        return fd

    def delete(self, name: str) -> None:
        self.taps.pop(name, None)

    def closed(self) -> bool:
        return all(_is_closed(fd) for fd in self.opened)


def _is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeLinks:
    fake = FakeLinks()
    for name in ("create_tap", "open_tap", "delete"):
        monkeypatch.setattr(links, name, getattr(fake, name))
    return fake


# --- the spec --------------------------------------------------------------------------------


def test_a_nic_takes_its_number_and_the_model_of_its_devices() -> None:
    assert nic_spec("vm1", NIC, "virtio", "q35") == NicSpec(NIC.device, NIC.mac, "vk-lan", "virtio", index=1)
    assert nic_spec("vm1", NIC, "emulated", "q35").model == "e1000"
    assert nic_spec("vm1", NIC.model_copy(update={"model": "e1000"}), "virtio", "q35").model == "e1000"
    with pytest.raises(SpecError, match="e1000 NIC needs a PCI machine"):
        nic_spec("vm1", NIC.model_copy(update={"model": "e1000"}), "virtio", "microvm")


def test_q35_gets_hotplug_ports_and_one_for_each_nic_beyond() -> None:
    assert pcie_ports("q35", ()) == HOTPLUG_PORTS == 8
    assert pcie_ports("q35", (_nic(index=3),)) == HOTPLUG_PORTS
    assert pcie_ports("q35", (_nic(index=11),)) == 12
    assert pcie_ports("microvm", (_nic(),)) == pcie_ports("virt", ()) == 0


def test_plan_gives_q35_vms_their_ports(tmp_path: Path) -> None:
    from tests.unit.drivers.qemu.test_plan import _plan

    assert _plan(tmp_path, machine="q35")[0].pcie_ports == HOTPLUG_PORTS
    assert _plan(tmp_path)[0].pcie_ports == 0  # microvm


# --- plug --------------------------------------------------------------------------------------


def test_plug_makes_the_tap_passes_it_and_adds_the_device(host: FakeLinks) -> None:
    monitor = FakeMonitor()
    hotplug.plug(_spec(), monitor, _nic(), None)  # type: ignore[arg-type]
    assert host.taps == {NIC.device: ("vk-lan", 0, None)}
    assert monitor.calls == [
        ("add_tap", (f"net-{NIC.device}",)),
        ("device_add", ("virtio-net-pci", f"nic-{NIC.device}",
                        {"netdev": f"net-{NIC.device}", "mac": NIC.mac, "bus": "rp1", "addr": "0"})),
    ]  # fmt: skip
    assert host.closed()  # QEMU has its own copy: virtkit keeps none


def test_plug_gives_the_tap_to_qemus_user_and_an_e1000_to_emulated_guests(host: FakeLinks) -> None:
    from virtkit.drivers.qemu.runas import RunAs

    monitor = FakeMonitor()
    user = RunAs("virtkit-qemu", 995, 994, (994,))
    hotplug.plug(_spec(devices="emulated"), monitor, _nic(model="e1000"), user)  # type: ignore[arg-type]
    assert host.taps[NIC.device] == ("vk-lan", 995, 994)
    assert monitor.calls[-1][1][0] == "e1000"


@pytest.mark.parametrize(
    ("fail", "undone"),
    [("add_tap", []), ("device_add", ["netdev_del"])],
)
def test_a_failed_step_undoes_the_ones_before(host: FakeLinks, fail: str, undone: list[str]) -> None:
    monitor = FakeMonitor(fail=fail)
    with pytest.raises(ToolError, match=f"refused {fail}"):
        hotplug.plug(_spec(), monitor, _nic(), None)  # type: ignore[arg-type]
    assert host.taps == {} and host.closed()
    assert monitor.names[monitor.names.index(fail) + 1 :] == undone


def test_a_tap_that_cannot_be_opened_is_removed(host: FakeLinks) -> None:
    host.fail = "open_tap"
    monitor = FakeMonitor()
    with pytest.raises(ToolError, match="cannot open tap"):
        hotplug.plug(_spec(), monitor, _nic(), None)  # type: ignore[arg-type]
    assert host.taps == {} and monitor.calls == []


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        (_spec("microvm"), "microvm machine, whose devices \\(virtio-mmio\\) cannot be hot-plugged"),
        (_spec(pcie_ports=0), "without hot-plug ports"),
    ],
)
def test_machines_without_hotplug_are_refused_untouched(host: FakeLinks, spec: VmSpec, said: str) -> None:
    monitor = FakeMonitor()
    with pytest.raises(StateError, match=said) as caught:
        hotplug.plug(spec, monitor, _nic(), None)  # type: ignore[arg-type]
    assert caught.value.hint is not None and "virtkit stop vm1" in caught.value.hint
    assert "attach the network" in caught.value.hint
    assert host.taps == {} and monitor.calls == []


def test_a_nic_beyond_the_ports_is_refused_untouched(host: FakeLinks) -> None:
    monitor = FakeMonitor()
    with pytest.raises(StateError, match="no hot-plug port for a NIC numbered 9"):
        hotplug.plug(_spec(), monitor, _nic(index=9), None)  # type: ignore[arg-type]
    assert host.taps == {} and monitor.calls == []


# --- unplug ------------------------------------------------------------------------------------


def test_unplug_waits_for_the_guest_then_removes_netdev_and_tap(host: FakeLinks) -> None:
    host.taps[NIC.device] = ("vk-lan", 0, None)
    monitor = FakeMonitor()
    hotplug.unplug(_spec(), monitor, _nic())  # type: ignore[arg-type]
    assert monitor.calls == [("device_del", (f"nic-{NIC.device}",)), ("netdev_del", (f"net-{NIC.device}",))]
    assert host.taps == {}


def test_a_guest_that_does_not_let_go_keeps_everything(host: FakeLinks) -> None:
    host.taps[NIC.device] = ("vk-lan", 0, None)
    monitor = FakeMonitor(lets_go=False)
    with pytest.raises(StateError, match=r"did not release its NIC vk5b0d2f7en1 within 1\.5 s") as caught:
        hotplug.unplug(_spec(), monitor, _nic(), timeout=1.5)  # type: ignore[arg-type]
    assert caught.value.hint is not None and "run the detach again" in caught.value.hint
    assert monitor.names == ["device_del"] and NIC.device in host.taps


def test_unplug_from_microvm_is_refused_untouched(host: FakeLinks) -> None:
    host.taps[NIC.device] = ("vk-lan", 0, None)
    monitor = FakeMonitor()
    with pytest.raises(StateError, match="cannot be hot-plugged") as caught:
        hotplug.unplug(_spec("microvm"), monitor, _nic())  # type: ignore[arg-type]
    assert caught.value.hint is not None and "detach the network" in caught.value.hint
    assert monitor.calls == [] and NIC.device in host.taps


# --- the driver: the boot record follows -------------------------------------------------------


@pytest.fixture
def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: FakeLinks
) -> tuple[QemuDriver, InstanceRecord, InstancePaths, FakeMonitor]:
    record = InstanceRecord(name="vm1", uuid=UUID, kind=InstanceKind.VM, nics=[NIC])
    paths = InstancePaths.of(tmp_path, "vm1")
    paths.dir.mkdir(parents=True)
    BootRecord(_spec(), started_at=1.0, console_offset=0, log_offset=0).save(VmFiles(paths).boot)
    monitor = FakeMonitor()
    driver = QemuDriver()
    monkeypatch.setattr(process, "running_pid", lambda pidfile, uuid: 4242)
    monkeypatch.setattr(driver, "_monitor", lambda record, paths, timeout=10.0: monitor)
    return driver, record, paths, monitor


def _booted_nics(paths: InstancePaths) -> tuple[NicSpec, ...]:
    boot = BootRecord.load(VmFiles(paths).boot)
    assert boot is not None
    return boot.spec.nics


def test_the_boot_record_lists_what_was_plugged_and_unplugged(
    running: tuple[QemuDriver, InstanceRecord, InstancePaths, FakeMonitor], host: FakeLinks
) -> None:
    driver, record, paths, monitor = running
    driver.plug_nic(record, paths, NIC, "vk-lan")
    assert _booted_nics(paths) == (_nic(),) and NIC.device in host.taps
    driver.unplug_nic(record, paths, NIC)
    assert _booted_nics(paths) == () and host.taps == {}
    assert monitor.names == ["add_tap", "device_add", "device_del", "netdev_del"]


def test_a_failed_plug_leaves_the_boot_record(
    running: tuple[QemuDriver, InstanceRecord, InstancePaths, FakeMonitor], host: FakeLinks
) -> None:
    driver, record, paths, monitor = running
    monitor.fail = "device_add"
    with pytest.raises(ToolError):
        driver.plug_nic(record, paths, NIC, "vk-lan")
    assert _booted_nics(paths) == () and host.taps == {}


def test_a_paused_guest_cannot_let_a_nic_go(
    running: tuple[QemuDriver, InstanceRecord, InstancePaths, FakeMonitor], host: FakeLinks
) -> None:
    driver, record, paths, monitor = running
    driver.plug_nic(record, paths, NIC, "vk-lan")
    monitor.status = "paused"
    with pytest.raises(StateError, match="is paused") as caught:
        driver.unplug_nic(record, paths, NIC)
    assert caught.value.hint == "resume it first: virtkit resume vm1"
    assert "device_del" not in monitor.names and _booted_nics(paths) == (_nic(),)


def test_a_stopped_vm_only_loses_its_tap(
    running: tuple[QemuDriver, InstanceRecord, InstancePaths, FakeMonitor],
    host: FakeLinks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver, record, paths, monitor = running
    host.taps[NIC.device] = ("vk-lan", 0, None)
    monkeypatch.setattr(process, "running_pid", lambda pidfile, uuid: None)
    driver.unplug_nic(record, paths, NIC)
    assert host.taps == {} and monitor.calls == []


def test_plug_into_a_stopped_vm_is_refused(
    running: tuple[QemuDriver, InstanceRecord, InstancePaths, FakeMonitor],
    host: FakeLinks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver, record, paths, monitor = running
    monkeypatch.setattr(process, "running_pid", lambda pidfile, uuid: None)
    with pytest.raises(StateError, match="is not running"):
        driver.plug_nic(record, paths, NIC, "vk-lan")
    assert host.taps == {} and monitor.calls == []
