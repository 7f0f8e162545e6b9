"""QemuDriver on real QEMU (TCG here): the whole Driver contract, driven directly (no CLI, no ops).

Builds the tiny image into a temporary state root (warm download cache: a few seconds), then boots
it: lifecycle on microvm with virtio, a QEMU killed behind the driver's back, the PID-reuse guard,
emulated devices on q35, an aarch64 guest. Every VM is SIGKILLed by its pidfile at teardown, and a
failing test prints the VM's console and runtime logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.permissions import reachable
from virtkit.drivers.base import InstancePaths, Runtime
from virtkit.drivers.qemu import QemuDriver, process
from virtkit.drivers.qemu.plan import VmFiles
from virtkit.errors import HostCapabilityError, StateError, ToolError
from virtkit.images.store import ImageStore
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, InstanceState, MiB
from virtkit.ops.images import build_tiny_image
from virtkit.store import Store, open_store

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds a root-owned tree"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt"),
]

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


@dataclass
class Host:
    root: Path
    store: Store
    images: ImageStore


@dataclass
class Vm:
    record: InstanceRecord
    paths: InstancePaths
    runtime: Runtime


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = reachable(tmp_path_factory.mktemp("root"))  # QEMU runs as virtkit-qemu, as by default
    with open_store(root) as store:
        yield Host(root, store, ImageStore(root, store))


@pytest.fixture(scope="module")
def tiny(host: Host) -> ImageRecord:
    return build_tiny_image(host.root, host.store)


def _dump(vm: Vm) -> None:
    for path in (vm.paths.console_log, vm.paths.log):
        text = path.read_text(errors="replace")[-4000:] if path.exists() else "(none)"
        print(f"----- {vm.record.name}: {path.name} -----\n{text}")


@pytest.fixture
def make_vm(host: Host, request: pytest.FixtureRequest) -> Iterator[Callable[..., Vm]]:
    """A factory: record + generate + prepare; every VM it made is SIGKILLed by pidfile afterwards
    and cleaned up (sockets, cgroup)."""
    made: list[Vm] = []
    failed_before = request.session.testsfailed

    def make(name: str, image: ImageRecord, **config: str) -> Vm:
        record = InstanceRecord(name=name, kind=InstanceKind.VM, image=image.fingerprint, arch=image.arch,
                                memory=256 * MiB, config=config)  # fmt: skip
        paths = InstancePaths.of(host.root, name)
        paths.dir.mkdir(parents=True)
        driver = QemuDriver()
        driver.prepare(record, image, host.images.path(image), paths)
        vm = Vm(record, paths, driver.generate(record, image, host.images.path(image), paths))
        made.append(vm)
        return vm

    yield make
    for vm in made:
        if request.session.testsfailed > failed_before:
            _dump(vm)
        pid = process.read_pid(vm.paths.pidfile)
        if pid is not None:
            process.kill(pid, vm.record.uuid)
        QemuDriver().cleanup(vm.record, vm.paths)  # sockets and the VM's cgroup


def _boot(vm: Vm) -> dict[str, float]:
    driver = QemuDriver()
    driver.start(vm.record, vm.runtime, vm.paths)
    phases = driver.wait_ready(vm.record, vm.paths, READY_TIMEOUT)
    print(f"{vm.record.name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    return phases


def _console_run(path: Path, command: str, timeout: float = 20.0) -> str:
    """Type `command` on the serial console socket (as `virtkit console` would) and return its output."""
    tag = secrets.token_hex(4)
    line = f"echo '<<''{tag}'; {command}; echo '{tag}''>>'\n".encode()  # quotes keep the echo from matching
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as console:
        console.connect(str(path))
        console.settimeout(0.5)
        received, sent = b"", 0.0
        while time.monotonic() < deadline:
            text = received.decode(errors="replace").replace("\r", "")
            if f"<<{tag}" in text and f"{tag}>>" in text:
                return text.split(f"<<{tag}", 1)[1].split(f"{tag}>>", 1)[0]
            if time.monotonic() - sent > 3.0:  # the shell may not read the console yet: type it again
                console.sendall(line)
                sent = time.monotonic()
            with contextlib.suppress(TimeoutError):
                received += console.recv(65536)
    raise AssertionError(f"no answer to {command!r} on the console: {received[-2000:]!r}")


def test_lifecycle_on_microvm(make_vm: Callable[..., Vm], tiny: ImageRecord) -> None:
    driver = QemuDriver()
    vm = make_vm("vm1", tiny)
    record, paths = vm.record, vm.paths
    assert vm.runtime.config["machine"] == "microvm" and "-sandbox" in vm.runtime.argv
    assert driver.status(record, paths).state is InstanceState.STOPPED
    phases = _boot(vm)
    assert 0 < phases["spawn"] <= phases["kernel"] <= phases["ready"] < READY_TIMEOUT
    status = driver.status(record, paths)
    assert status.state is InstanceState.RUNNING and status.pid == process.read_pid(paths.pidfile)
    assert status.details["accel"] == vm.runtime.config["accel"] and status.details["phases"] == phases
    driver.pause(record, paths)
    assert driver.status(record, paths).state is InstanceState.PAUSED
    driver.resume(record, paths)
    assert driver.status(record, paths).state is InstanceState.RUNNING
    result = driver.exec(record, paths, ["hostname"], 20)
    assert (result.exit_code, result.stdout) == (0, b"vm1\n")
    with pytest.raises(StateError, match="already running"):
        driver.start(record, vm.runtime, paths)
    driver.stop(record, paths, force=False, timeout=STOP_TIMEOUT)  # ACPI power button: the guest powers off
    assert "reboot: Power down" in paths.console_log.read_text(errors="replace")
    status = driver.status(record, paths)
    assert (status.state, status.reason) == (InstanceState.STOPPED, "") and not paths.pidfile.exists()
    driver.cleanup(record, paths)
    assert not paths.monitor.exists() and VmFiles(paths).disk.exists()
    with pytest.raises(StateError, match="not running"):
        driver.pause(record, paths)


def test_root_disk_is_an_overlay_on_the_image(
    make_vm: Callable[..., Vm], tiny: ImageRecord, host: Host
) -> None:
    vm = make_vm("grown", tiny, disk_size="256MiB")
    disk = VmFiles(vm.paths).disk
    info = json.loads(subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(disk)],
                                     capture_output=True, check=True).stdout)  # fmt: skip
    assert info["virtual-size"] == 256 * MiB
    assert info["full-backing-filename"] == str(host.images.file(tiny, "disk"))
    assert info["backing-filename-format"] == "qcow2"


def test_qemu_killed_behind_the_drivers_back(make_vm: Callable[..., Vm], tiny: ImageRecord) -> None:
    driver = QemuDriver()
    vm = make_vm("vm2", tiny)
    driver.start(vm.record, vm.runtime, vm.paths)
    pid = driver.status(vm.record, vm.paths).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert process.wait_gone(pid, vm.record.uuid, 10)
    status = driver.status(vm.record, vm.paths)
    assert status.state is InstanceState.ERROR and "killed" in status.reason
    with pytest.raises(StateError, match="stopped before it was ready"):
        driver.wait_ready(vm.record, vm.paths, 5)
    driver.stop(vm.record, vm.paths, force=False, timeout=1)  # nothing to stop: clears the stale pidfile
    assert driver.status(vm.record, vm.paths).state is InstanceState.STOPPED


def test_pidfile_naming_another_process_is_not_the_vm(make_vm: Callable[..., Vm], tiny: ImageRecord) -> None:
    driver = QemuDriver()
    vm = make_vm("reused", tiny)
    vm.paths.pidfile.write_text(f"{os.getpid()}\n")  # as if the PID had been reused by this very process
    status = driver.status(vm.record, vm.paths)
    assert status.state is InstanceState.ERROR and status.pid is None
    with pytest.raises(StateError, match="not running"):
        driver.pause(vm.record, vm.paths)
    driver.stop(vm.record, vm.paths, force=True, timeout=1)  # must not signal us
    driver.cleanup(vm.record, vm.paths)
    assert not vm.paths.pidfile.exists()


def test_qemu_refusing_its_command_line_is_reported(make_vm: Callable[..., Vm], tiny: ImageRecord) -> None:
    vm = make_vm("broken", tiny)
    broken = Runtime(vm.runtime.kind, [*vm.runtime.argv, "-device", "no-such-device"], vm.runtime.config)
    with pytest.raises(ToolError, match="no-such-device"):
        QemuDriver().start(vm.record, broken, vm.paths)
    assert QemuDriver().status(vm.record, vm.paths).state is InstanceState.STOPPED


def test_emulated_devices_on_q35(make_vm: Callable[..., Vm], tiny: ImageRecord) -> None:
    driver = QemuDriver()
    vm = make_vm("legacy", tiny, devices="emulated")
    assert vm.runtime.config["machine"] == "q35" and not [a for a in vm.runtime.argv if "virtio" in a]
    _boot(vm)
    mounts = _console_run(Path(vm.runtime.config["console_socket"]), "cat /proc/mounts")
    assert "/dev/sda / ext4 rw" in mounts  # the root disk on AHCI, through the interactive console
    assert driver.status(vm.record, vm.paths).state is InstanceState.RUNNING
    with pytest.raises(HostCapabilityError, match="no command channel"):
        driver.exec(vm.record, vm.paths, ["true"], 5)
    driver.stop(vm.record, vm.paths, force=True, timeout=1)
    assert driver.status(vm.record, vm.paths).state is InstanceState.STOPPED


@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="needs qemu-system-arm")
def test_aarch64_guest(make_vm: Callable[..., Vm], host: Host) -> None:
    driver = QemuDriver()
    image = build_tiny_image(host.root, host.store, arch="aarch64")
    vm = make_vm("arm", image)
    assert vm.runtime.config["machine"] == "virt" and vm.runtime.config["accel"] == "tcg"
    assert any("emulated" in notice for notice in vm.runtime.notices)
    _boot(vm)
    result = driver.exec(vm.record, vm.paths, ["uname", "-m"], 20)
    assert (result.exit_code, result.stdout) == (0, b"aarch64\n")
    driver.stop(vm.record, vm.paths, force=False, timeout=STOP_TIMEOUT)  # gpio power key
    assert driver.status(vm.record, vm.paths).state is InstanceState.STOPPED
