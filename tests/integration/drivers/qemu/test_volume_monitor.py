"""Block volumes on a real QEMU (q35 under TCG, running SeaBIOS with nothing to boot: no guest OS),
as QEMU's unprivileged user when the host has it, with the volume in a directory only root can
enter: virtkit opens the qcow2 and QEMU gets the descriptor, at start (`-add-fd`) and hot-plugged
(`add-fd` over the monitor socket). Seen in `query-block`, throttled by its group, written through
QEMU (HMP qemu-io) and read back on the host; a hot-plug QEMU refuses leaves nothing behind; an
unplug no guest answers is bounded and removes nothing. A real guest: tests/e2e/test_vm_volumes.py."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.permissions import reachable
from virtkit.drivers.qemu import process, volumeplug, volumes
from virtkit.drivers.qemu.argv import build_argv
from virtkit.drivers.qemu.monitor import Monitor
from virtkit.drivers.qemu.runas import lookup
from virtkit.drivers.qemu.spec import VmSpec, VolumeSpec
from virtkit.errors import StateError, ToolError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs QEMU as its own user"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]

UUID = "7d2c9e41-0b6a-4f3e-8c15-9a4e2d1b6f03"


@dataclass
class Qemu:
    spec: VmSpec
    monitor: Monitor

    def hmp(self, command: str) -> str:
        text = self.monitor.execute("human-monitor-command", {"command-line": command})
        assert isinstance(text, str)
        return text

    def blocks(self) -> dict[str, str]:
        """query-block: {device id: its top node's file name}."""
        listed = self.monitor.execute("query-block")
        assert isinstance(listed, list)
        return {b["qdev"].split("/")[3]: b["inserted"]["file"] for b in listed if "inserted" in b}

    def fdsets(self) -> list[object]:
        listed = self.monitor.execute("query-fdsets")
        assert isinstance(listed, list)
        return listed


class Lab:
    """q35 machines with virtkit's volume ports, and volumes in a pool only root can enter."""

    def __init__(self, tmp_path: Path) -> None:
        self.directory = reachable(tmp_path / "vm")
        self.directory.mkdir()
        self.directory.chmod(0o1777)  # QEMU's user makes its sockets and pidfile here
        self.pool = tmp_path / "pool"
        self.pool.mkdir(mode=0o700)  # QEMU's user cannot even enter it
        self.pids: list[int] = []
        self.spec = VmSpec(
            name="vols", uuid=UUID, arch="x86_64", accel="tcg", machine="q35", cpus=1, memory=64 << 20,
            pidfile=str(self.directory / "pid"), qmp_socket=str(self.directory / "qmp.sock"),
            console_socket=str(self.directory / "console.sock"),
            console_log=str(self.directory / "console.log"), pcie_ports=8, volume_ports=4,
        )  # fmt: skip

    def volume(self, slot: int, name: str, **limits: int) -> VolumeSpec:
        path = self.pool / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
        path.chmod(0o600)
        return VolumeSpec(f"vol{slot}", "fast", name, str(path), limits=tuple(limits.items()))

    def start(self, *vols: VolumeSpec) -> Qemu:
        """QEMU running (no -S: QEMU drops unused fd sets only while it runs) with `vols`."""
        spec = dataclasses.replace(self.spec, volumes=vols)
        log = self.directory / "qemu.log"
        with volumeplug.opened(spec) as fds:
            argv = volumes.with_volume_fds(build_argv(spec), spec, fds)
            pid = process.spawn(argv, log, user=lookup(), pass_fds=fds.values())
        self.pids.append(pid)
        deadline = time.monotonic() + 20
        while not Path(spec.qmp_socket).is_socket():
            code = process.exit_code(pid)
            assert code is None, f"QEMU exited ({code}): {log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, "QEMU's monitor socket never appeared"
            time.sleep(0.05)
        return Qemu(spec, Monitor(Path(spec.qmp_socket), name="vols", timeout=5.0))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        for pid in made.pids:
            process.kill(pid, UUID)
        log = made.directory / "qemu.log"
        print(log.read_text(errors="replace") if log.exists() else "(no QEMU log)")


def _read_back(path: str, offset: int, pattern: int) -> bool:
    checked = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern:#x} {offset} 4k", path],
                             capture_output=True, text=True)  # fmt: skip
    return checked.returncode == 0 and "Pattern verification failed" not in checked.stdout


def test_a_volume_given_at_start_and_one_hot_plugged_by_descriptor(lab: Lab) -> None:
    cold = lab.volume(0, "data", **{"iops-write": 1000})
    user = lookup()
    if user is not None:  # QEMU runs as its user, who cannot open the volumes itself
        assert subprocess.run(["runuser", "-u", user.user, "--", "test", "-r", cold.path]).returncode != 0
    qemu = lab.start(cold)
    assert qemu.monitor.query_status() == "running"
    hot = lab.volume(2, "logs")
    volumeplug.plug(qemu.spec, qemu.monitor, hot)
    blocks = qemu.blocks()
    assert set(blocks) == {"vk-vol0", "vk-vol2"}
    assert blocks["vk-vol2"].startswith("/dev/fdset/") and "/dev/fdset/0" in blocks["vk-vol0"]
    limits = qemu.monitor.execute("qom-get", {"path": "/objects/vk-vol0-tg", "property": "limits"})
    assert isinstance(limits, dict) and limits["iops-write"] == 1000
    tree = qemu.hmp("info qtree")
    for device, port in (("vk-vol0", "rpv0"), ("vk-vol2", "rpv2")):
        assert f'id "{device}"' in tree[tree.index(f'id "{port}"') :].split("dev: pcie-root-port")[0]
        assert 'serial = "' + ("data" if device == "vk-vol0" else "logs") + '"' in tree
    # the descriptor outlives the monitor connection that brought it (QEMU drops unused fd sets then)
    for device, pattern, offset in (("vk-vol2", "0xab", "0"), ("vk-vol0", "0xcd", "64k")):
        backend = f"/machine/peripheral/{device}/virtio-backend"  # the guest's disk writes it
        said = qemu.hmp(f'qemu-io -d {backend} "write -P {pattern} {offset} 4k"')
        assert said == "", said  # qemu-io's own report goes to QEMU's output; errors come back
    qemu.monitor.quit()
    for vol, offset, pattern in ((hot, 0, 0xAB), (cold, 65536, 0xCD)):
        deadline = time.monotonic() + 10
        while not _read_back(vol.path, offset, pattern):  # QEMU lets go of its lock as it exits
            assert time.monotonic() < deadline, f"{vol.name} does not hold what QEMU wrote"
            time.sleep(0.1)


def test_a_refused_hot_plug_leaves_nothing_behind(lab: Lab) -> None:
    qemu = lab.start()
    vol = lab.volume(1, "data", **{"bps-total": 1 << 20})
    # a device on a port QEMU does not have: refused at the last step, after everything else was added
    device = {**volumes.device(qemu.spec, vol), "bus": "rpv9"}
    fd = volumeplug.open_volume(vol, "vols")
    try:
        with pytest.raises(ToolError, match="QEMU refused device_add"):
            qemu.monitor.add_volume(fd, volumes.node_id(vol), volumes.throttle_group(vol),
                                    volumes.block_nodes(vol, vol.path), device)  # fmt: skip
    finally:
        os.close(fd)
    assert qemu.monitor.block_nodes() == [] and qemu.fdsets() == []
    assert "vk-vol1-tg" not in qemu.hmp("info qom-tree /objects")
    volumeplug.plug(qemu.spec, qemu.monitor, vol)  # the slot is free again
    assert set(qemu.blocks()) == {"vk-vol1"}


def test_an_unplug_no_guest_answers_is_bounded_and_leaves_everything(lab: Lab) -> None:
    qemu = lab.start()
    vol = lab.volume(0, "data")
    volumeplug.plug(qemu.spec, qemu.monitor, vol)
    began = time.monotonic()
    with pytest.raises(StateError, match="did not release the disk"):
        volumeplug.unplug(qemu.spec, qemu.monitor, vol, timeout=1.0)
    assert 1.0 <= time.monotonic() - began < 5.0
    assert set(qemu.blocks()) == {"vk-vol0"} and qemu.monitor.block_nodes() == ["vk-vol0", "vk-vol0-file"]
    # a second volume in the same slot is refused by QEMU, and leaves the first as it was
    with pytest.raises(ToolError):
        volumeplug.plug(qemu.spec, qemu.monitor, lab.volume(0, "other"))
    assert qemu.monitor.block_nodes() == ["vk-vol0", "vk-vol0-file"]
