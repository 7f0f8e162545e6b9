"""A real `virtkit image build debian` of both flavours, checked without mounting, and booted.

The first run debootstraps (a few minutes, network needed); it uses the default cache
(~/.cache/virtkit, or $VIRTKIT_CACHE) so later runs copy the cached trees and take well under a
minute per flavour. The VM image is booted under TCG and must reach a login prompt with the guest
agent answering on its virtio-serial port.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.images.debian import build_debian
from virtkit.images.staged import DISK, INITRD, KERNEL, ROOTFS, StagedImage
from virtkit.ops.images import cache_dir

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap needs root"),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap is not installed"),
]

CACHE = cache_dir()
BOOT_TIMEOUT = 300.0


def _build(tmp: Path, flavour: str) -> tuple[Path, StagedImage, list[tuple[str, float | None]]]:
    staging = tmp / flavour
    staging.mkdir()
    reports: list[tuple[str, float | None]] = []
    started = time.monotonic()
    image = build_debian(
        staging,
        cache=CACHE,
        flavour=flavour,
        progress=lambda what, fraction: reports.append((what, fraction)),
    )
    print(f"debian {flavour} build: {time.monotonic() - started:.1f} s")
    return staging, image, reports


@pytest.fixture(scope="module")
def container(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, StagedImage, list[tuple[str, float | None]]]:
    return _build(tmp_path_factory.mktemp("debian"), "container")


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StagedImage, list[tuple[str, float | None]]]:
    return _build(tmp_path_factory.mktemp("debian"), "vm")


def _mounts_below(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


def test_container_tree(container: tuple[Path, StagedImage, list[tuple[str, float | None]]]) -> None:
    staging, image, reports = container
    assert image.kinds == ["container"] and image.name == "debian-bookworm"
    assert image.files == {ROOTFS: "rootfs"}
    # A system container: no OCI command, systemd as PID 1, ready when it says so on its console.
    assert image.container == {} and image.properties["init"] == "/sbin/init"
    signal, marker = image.properties["stop_signal"], image.properties["ready_marker"]
    assert (signal, marker) == ("SIGRTMIN+3", "VIRTKIT-READY")
    tree = staging / "rootfs"
    assert os.path.realpath(tree / "sbin/init").endswith("/lib/systemd/systemd")
    for program in (
        "usr/sbin/sshd",
        "usr/sbin/qemu-ga",
        "usr/bin/cloud-init",
        "lib/systemd/systemd-networkd",
    ):
        assert (tree / program).is_file(), program
    assert "DHCP=yes" in (tree / "etc/systemd/network/80-virtkit-dhcp.network").read_text()
    assert (tree / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").is_symlink()
    assert "NoCloud" in (tree / "etc/cloud/cloud.cfg.d/90-virtkit.cfg").read_text()
    assert (tree / "etc/machine-id").read_text() == ""
    assert not list((tree / "etc/ssh").glob("ssh_host_*"))
    assert not list((tree / "boot").glob("vmlinuz*")) and not (tree / "usr/lib/modules").exists()
    assert os.readlink(tree / "etc/systemd/system/systemd-udevd.service") == "/dev/null"
    assert os.readlink(tree / "etc/systemd/system/console-getty.service") == "/dev/null"
    assert (tree / "etc/systemd/system/multi-user.target.wants/virtkit-ready.service").is_symlink()
    assert not (tree / "etc/hostname").exists() and (tree / "etc/cloud/cloud-init.disabled").is_file()
    assert list((tree / "dev").iterdir()) == []
    assert (tree / "etc/shadow").read_text().startswith(("root:*:", "root:!"))
    assert any(what.startswith("copying") for what, _ in reports)
    assert _mounts_below(staging) == [] and _mounts_below(CACHE) == []


def _debugfs(raw: Path, command: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", command, str(raw)], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def test_vm_disk_kernel_initrd(
    vm: tuple[Path, StagedImage, list[tuple[str, float | None]]], tmp_path: Path
) -> None:
    staging, image, _reports = vm
    assert image.kinds == ["vm"]
    assert image.files == {DISK: "disk.qcow2", KERNEL: "vmlinuz", INITRD: "initrd.img"}
    assert sorted(p.name for p in staging.iterdir()) == ["disk.qcow2", "initrd.img", "vmlinuz"]
    assert image.properties["cmdline"].startswith("root=LABEL=virtkit-root rw console=ttyS0")
    assert image.properties["kernel_version"].endswith("-amd64")
    assert (staging / "vmlinuz").stat().st_size > 4_000_000 and (
        staging / "initrd.img"
    ).stat().st_size > 4_000_000
    disk = staging / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "check", "-f", "qcow2", str(disk)], check=True, timeout=120, capture_output=True
    )
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-f", "qcow2", "--output=json", str(disk)],
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["virtual-size"] == image.virtual_size
    raw = tmp_path / "disk.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw)], check=True, timeout=300
    )
    assert "Filesystem volume name:   virtkit-root" in _debugfs(raw, "stats")
    assert "Type: symlink" in _debugfs(raw, "stat /sbin/init")
    assert "Type: regular" in _debugfs(raw, "stat /usr/sbin/qemu-ga")
    assert "80-virtkit-dhcp.network" in _debugfs(raw, "ls /etc/systemd/network")
    assert "Size: 0" in _debugfs(raw, "stat /etc/machine-id")
    assert image.properties["kernel_version"] in _debugfs(raw, "ls /usr/lib/modules")


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(timeout=30)


def _agent_answers(sock_path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)  # an agent up answers at once: waiting longer only slows the next look
            sock.connect(str(sock_path))
            sock.sendall(b'{"execute": "guest-sync", "arguments": {"id": 4242}}\n')
            return b'"return": 4242' in sock.recv(4096)
    except OSError:
        return False


def test_vm_boots_to_login_with_the_agent_up(
    vm: tuple[Path, StagedImage, list[tuple[str, float | None]]],
    tmp_path: Path,
    qemu: list[subprocess.Popen[bytes]],
) -> None:
    staging, image, _reports = vm
    overlay, serial, agent = tmp_path / "overlay.qcow2", tmp_path / "serial.log", tmp_path / "qga.sock"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", str(staging / "disk.qcow2"), str(overlay)],
        check=True,
        timeout=60,
        capture_output=True,
    )
    argv = [
        "qemu-system-x86_64",
        "-M",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-kernel",
        str(staging / "vmlinuz"),
        "-initrd",
        str(staging / "initrd.img"),
        "-append",
        image.properties["cmdline"],
        "-serial",
        f"file:{serial}",
        "-drive",
        f"file={overlay},format=qcow2,if=virtio",
        "-netdev",
        "user,id=net0",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-chardev",
        f"socket,id=qga,path={agent},server=on,wait=off",
        "-device",
        "virtio-serial-pci",
        "-device",
        f"virtserialport,chardev=qga,name={image.properties['agent_port']}",
    ]
    started = time.monotonic()
    qemu.append(
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    )
    login = agent_up = None
    deadline = started + BOOT_TIMEOUT
    while time.monotonic() < deadline and (login is None or agent_up is None):
        assert qemu[0].poll() is None, "QEMU exited"
        log = serial.read_text(errors="replace") if serial.exists() else ""
        if login is None and "login:" in log:
            login = time.monotonic() - started
        if agent_up is None and _agent_answers(agent):
            agent_up = time.monotonic() - started
        time.sleep(0.5)
    log = serial.read_text(errors="replace") if serial.exists() else ""
    print(f"TCG boot: login prompt after {login} s, guest agent after {agent_up} s")
    assert login is not None, "no login prompt; serial log ends with:\n" + log[-3000:]
    assert agent_up is not None, "the guest agent never answered"
    assert "Reached target" in log and "Failed to start" not in log, log[-3000:]
