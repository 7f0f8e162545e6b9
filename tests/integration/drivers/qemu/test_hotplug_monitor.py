"""NIC hot-plug through QMP on a real QEMU (q35 under TCG, no guest: its vCPUs never run), as QEMU's
unprivileged user when the host has it: the tap descriptor passed over the monitor socket (QEMU's
user cannot open /dev/net/tun), the netdev made on it, virtio-net and e1000 devices on the root
ports argv.py lays out, hotplug.plug's undo when QEMU refuses, and the bounded wait of an unplug no
guest answers (asked twice: the request stays pending, nothing is removed). In a network namespace
of its own: the host's interfaces are never touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns import own_netns
from tests.permissions import reachable
from virtkit.drivers.qemu import hotplug, process
from virtkit.drivers.qemu.argv import build_argv, device_id, netdev_id
from virtkit.drivers.qemu.monitor import Monitor
from virtkit.drivers.qemu.runas import RunAs, lookup
from virtkit.drivers.qemu.spec import NicSpec, VmSpec
from virtkit.errors import StateError, ToolError
from virtkit.network import links

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="makes taps and bridges"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]

UUID = "0f4bd2a1-7c3e-4b8a-9d65-2e1f0a9c8b77"
BRIDGE = "vkt-hp0"
TAPS = ("vk0f4bd2a1n1", "vk0f4bd2a1n2")


@dataclass
class Qemu:
    spec: VmSpec
    monitor: Monitor
    user: RunAs | None

    def nic(self, tap: str, index: int, model: str = "virtio") -> NicSpec:
        return NicSpec(tap, f"52:54:00:00:00:{index:02x}", BRIDGE, model, index)  # type: ignore[arg-type]

    def hmp(self, command: str) -> str:
        text = self.monitor.execute("human-monitor-command", {"command-line": command})
        assert isinstance(text, str)
        return text


def _wait_socket(path: Path, pid: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while not path.is_socket():
        code = process.exit_code(pid)
        assert code is None, f"QEMU exited ({code}): {log.read_text(errors='replace')}"
        assert time.monotonic() < deadline, "QEMU's monitor socket never appeared"
        time.sleep(0.05)


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Qemu]:
    """A q35 machine with virtkit's root ports and no NIC, stopped before its first instruction."""
    directory = reachable(tmp_path / "vm")
    directory.mkdir()
    directory.chmod(0o1777)  # QEMU's user makes its sockets and pidfile here
    spec = VmSpec(
        name="hp", uuid=UUID, arch="x86_64", accel="tcg", machine="q35", cpus=1, memory=64 << 20,
        pidfile=str(directory / "pid"), qmp_socket=str(directory / "qmp.sock"),
        console_socket=str(directory / "console.sock"), console_log=str(directory / "console.log"),
        devices="emulated", pcie_ports=4,
    )  # fmt: skip
    log = directory / "qemu.log"
    user = lookup()
    with own_netns():
        links.ensure_bridge(BRIDGE, "10.99.0.1/24", alias="virtkit-test:hotplug")
        pid = process.spawn([*build_argv(spec), "-S"], log, user=user)
        try:
            _wait_socket(Path(spec.qmp_socket), pid, log)
            yield Qemu(spec, Monitor(Path(spec.qmp_socket), name="hp", timeout=5.0), user)
        finally:
            process.kill(pid, UUID)
            for name in (*TAPS, BRIDGE):
                links.delete(name)
            print(log.read_text(errors="replace") if log.exists() else "(no QEMU log)")


def _link(name: str) -> dict[str, object] | None:
    """`ip -j link show` of `name` in the test's namespace (sysfs shows another one), None if none."""
    shown = subprocess.run(["ip", "-j", "link", "show", "dev", name], capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    found: dict[str, object] = json.loads(shown.stdout)[0]
    return found


def test_a_nic_plugged_by_descriptor_on_its_root_port(qemu: Qemu) -> None:
    hotplug.plug(qemu.spec, qemu.monitor, qemu.nic(TAPS[0], 1), qemu.user)
    assert device_id(TAPS[0]) in qemu.monitor.peripherals()
    assert netdev_id(TAPS[0]) in qemu.hmp("info network")
    tree = qemu.hmp("info qtree")
    port = tree[tree.index('id "rp1"') :]
    assert f'id "{device_id(TAPS[0])}"' in port.split("dev: pcie-root-port")[0]  # on rp1's own bus
    tap = _link(TAPS[0])
    assert tap is not None and tap.get("master") == BRIDGE
    # QEMU holds the only open descriptor (virtkit closed its own): the tap has a carrier
    assert "NO-CARRIER" not in tap["flags"]  # type: ignore[operator]
    if qemu.user is not None:
        shown = subprocess.run(["ip", "-d", "link", "show", "dev", TAPS[0]], capture_output=True, text=True)
        assert f"user {qemu.user.user}" in shown.stdout or f"user {qemu.user.uid}" in shown.stdout


def test_an_e1000_and_a_port_already_taken(qemu: Qemu) -> None:
    hotplug.plug(qemu.spec, qemu.monitor, qemu.nic(TAPS[0], 2, "e1000"), qemu.user)
    # A second NIC on the same port (the one slot taken): refused, and nothing of it left.
    with pytest.raises(ToolError, match="QEMU refused device_add"):
        hotplug.plug(qemu.spec, qemu.monitor, qemu.nic(TAPS[1], 2, "e1000"), qemu.user)
    assert device_id(TAPS[1]) not in qemu.monitor.peripherals()
    assert netdev_id(TAPS[1]) not in qemu.hmp("info network")
    assert _link(TAPS[1]) is None and _link(TAPS[0]) is not None


def test_a_nic_beyond_the_ports_is_refused_before_anything(qemu: Qemu) -> None:
    with pytest.raises(StateError, match="no hot-plug port for a NIC numbered 4"):
        hotplug.plug(qemu.spec, qemu.monitor, qemu.nic(TAPS[0], 4), qemu.user)
    assert _link(TAPS[0]) is None


def test_an_unplug_no_guest_answers_is_bounded_and_leaves_everything(qemu: Qemu) -> None:
    nic = qemu.nic(TAPS[0], 0)
    hotplug.plug(qemu.spec, qemu.monitor, nic, qemu.user)
    began = time.monotonic()
    with pytest.raises(StateError, match="did not release its NIC"):
        hotplug.unplug(qemu.spec, qemu.monitor, nic, timeout=1.0)
    assert 1.0 <= time.monotonic() - began < 5.0
    # asked again while the first request is pending: waits again, no error from QEMU
    assert qemu.monitor.device_del(device_id(TAPS[0]), 0.5) is False
    assert device_id(TAPS[0]) in qemu.monitor.peripherals()
    assert netdev_id(TAPS[0]) in qemu.hmp("info network") and _link(TAPS[0]) is not None
    assert qemu.monitor.device_del("nic-nothing-here", 0.5) is True  # a device not there is gone


def test_netdev_del_of_a_netdev_not_there_is_fine(qemu: Qemu) -> None:
    qemu.monitor.netdev_del(netdev_id(TAPS[1]))
    with pytest.raises(ToolError, match="QEMU refused netdev_add"):  # no descriptor of that name
        qemu.monitor.execute("netdev_add", {"type": "tap", "id": "net-x", "fd": "net-x"})
