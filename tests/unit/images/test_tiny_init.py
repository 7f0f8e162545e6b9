"""The guest side of the tiny image: script syntax, what the scripts promise, and their logic run
by a real shell against a fake /sys."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from virtkit.images import tinyinit
from virtkit.images.tinyinit import (
    AGENT_PATH,
    AGENT_PORT,
    FUNCTIONS_PATH,
    IFUP_PATH,
    INITRAMFS_INIT,
    MODULE_LIST_PATH,
    PORT_WAIT,
    READY_MARKER,
    READY_PORT,
    VM_MARKER,
    guest_files,
)

BUSYBOX = shutil.which("busybox")
SHELL = [BUSYBOX, "sh"] if BUSYBOX else ["sh"]  # busybox's ash is the guest's shell
FILES = guest_files("tiny", 'NAME="virtkit tiny"\n')
SCRIPTS = {"init": INITRAMFS_INIT, **{name: text for name, (text, mode) in FILES.items() if mode & 0o111}}


def _sh(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHELL, "-c", script], capture_output=True, text=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin", **env})


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_parse_and_have_no_unfilled_placeholders(name: str) -> None:
    script = SCRIPTS[name]
    assert script.startswith("#!/bin/sh\n")
    assert not re.search(r"@[A-Z_]+@", script)
    done = subprocess.run([*SHELL, "-n"], input=script, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr


def test_initramfs_init_loads_modules_finds_root_and_switches() -> None:
    assert f"< {MODULE_LIST_PATH}" in INITRAMFS_INIT
    assert "insmod \"$file\" $args" in INITRAMFS_INIT
    assert "${root:-/dev/vda /dev/sda}" in INITRAMFS_INIT
    assert "exec switch_root /newroot \"$init\"" in INITRAMFS_INIT
    assert INITRAMFS_INIT.rstrip().endswith('exec "$init"')  # no disk: go on from the initramfs
    assert "mount -t devtmpfs" in INITRAMFS_INIT


def test_boot_script_announces_readiness_on_console_and_port() -> None:
    rcs = FILES["etc/init.d/rcS"][0]
    assert f"wait_port {READY_PORT} {PORT_WAIT}" in rcs and f"echo {READY_MARKER} > " in rcs
    assert rcs.rstrip().endswith(f"echo {READY_MARKER}")
    assert f"wait_port {AGENT_PORT} {PORT_WAIT}" in rcs and f"[ -x {AGENT_PATH} ]" in rcs
    assert f"MDEV=$ifname {IFUP_PATH}" in rcs  # boot NICs start DHCP as hot-plugged ones do
    ifup = FILES[IFUP_PATH.lstrip("/")][0]
    assert "udhcpc -f" in ifup and "&\n" in ifup.split("udhcpc", 1)[1]  # DHCP never holds the boot
    mdev = FILES["etc/mdev.conf"][0]
    assert mdev.splitlines()[-1] == ".* 0:0 600 !"  # mdev never makes or changes a device node
    assert "acpid" in rcs


def test_inittab_and_power_button() -> None:
    inittab = FILES["etc/inittab"][0]
    assert "::sysinit:/etc/init.d/rcS" in inittab and "::shutdown:/etc/init.d/rcK" in inittab
    assert "::respawn:/usr/lib/virtkit/console" in inittab
    assert FILES["etc/acpi/PWRF/00000080"] == (tinyinit.POWER_BUTTON, 0o755)
    assert "poweroff" in tinyinit.POWER_BUTTON


def test_accounts_and_identity() -> None:
    assert FILES["etc/passwd"][0].startswith("root:x:0:0:")
    assert FILES["etc/shadow"][1] == 0o640
    assert FILES["etc/hostname"][0] == "tiny\n"


def _conditions(tmp: Path) -> str:
    """The initramfs's device-condition functions, reading a fake /sys under `tmp`."""
    start = INITRAMFS_INIT.index("has_pci() {")
    end = INITRAMFS_INIT.index("# Modules in dependency order")
    return INITRAMFS_INIT[start:end].replace("/sys/", f"{tmp}/sys/")


def _device(tmp: Path, bus: str, name: str, **attrs: str) -> None:
    path = tmp / "sys" / "bus" / bus / "devices" / name
    path.mkdir(parents=True)
    for key, value in attrs.items():
        (path / key).write_text(value + "\n")


def test_module_conditions_match_fake_devices(tmp_path: Path) -> None:
    _device(tmp_path, "pci", "0000:00:1f.2", vendor="0x8086", device="0x2922", **{"class": "0x010601"})
    _device(tmp_path, "pci", "0000:00:02.0", vendor="0x1af4", device="0x1001", **{"class": "0x010000"})
    _device(tmp_path, "virtio", "virtio0", device="0x0002")
    checks = {
        "": True, "pci:1af4": True, "pci:8086:2922": True, "pci:8086:100e": False, "pci:10ec": False,
        "pciclass:0106": True, "pciclass:0101": False, "virtio:2": True, "virtio:1": False,
        "virtio:1 pciclass:0106": True, "virtio:1 virtio:3": False,
    }
    for conditions, expected in checks.items():
        done = _sh(_conditions(tmp_path) + f"wanted {conditions} && echo yes || echo no")
        assert done.stdout.strip() == ("yes" if expected else "no"), (conditions, done.stderr)


def _port_functions(tmp: Path) -> str:
    """find_port and wait_port, reading a fake /sys and /dev under `tmp`."""
    functions = FILES[FUNCTIONS_PATH.lstrip("/")][0]
    start, end = functions.index("find_port() {"), functions.index("# Sets $mode:")
    return functions[start:end].replace("/sys/", f"{tmp}/sys/").replace("/dev/", f"{tmp}/dev/")


def _serial_device(tmp: Path) -> None:
    (tmp / "sys" / "bus" / "virtio" / "drivers" / "virtio_console" / "virtio1").mkdir(parents=True)
    (tmp / "dev").mkdir()


def _add_port(tmp: Path, device: str, name: str) -> None:
    """A port as the driver adds it: the directory and the node, and its name only afterwards."""
    port = tmp / "sys" / "class" / "virtio-ports" / device
    port.mkdir(parents=True)
    (port / "name").write_text("\n")
    (tmp / "dev" / device).symlink_to("/dev/null")  # a character device, as the real node is
    (port / "name").write_text(name + "\n")


def _timed(script: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = _sh(script)
    return done, time.monotonic() - started


def test_a_port_that_appears_after_the_boot_script_looked_is_waited_for(tmp_path: Path) -> None:
    _serial_device(tmp_path)
    _add_port(tmp_path, "vport1p1", READY_PORT)
    late = threading.Timer(0.6, _add_port, (tmp_path, "vport1p2", AGENT_PORT))
    late.start()
    try:
        done, took = _timed(_port_functions(tmp_path) + f'wait_port {AGENT_PORT} 5 && echo "$portdev"')
    finally:
        late.join()
    assert done.stdout == f"{tmp_path}/dev/vport1p2\n", done.stderr
    assert 0.6 <= took < 3


def test_a_port_is_not_waited_for_without_a_serial_device_nor_beyond_its_time(tmp_path: Path) -> None:
    functions = _port_functions(tmp_path)
    done, took = _timed(functions + f"wait_port {AGENT_PORT} 5 || echo none")
    assert done.stdout == "none\n" and took < 0.5, done.stderr  # a container, emulated devices
    _serial_device(tmp_path)
    _add_port(tmp_path, "vport1p1", READY_PORT)
    done, took = _timed(functions + f"wait_port {AGENT_PORT} 1 || echo none")
    assert done.stdout == "none\n" and 1 <= took < 3, done.stderr
    done, took = _timed(functions + f'wait_port {READY_PORT} 1 && echo "$portdev"')
    assert done.stdout == f"{tmp_path}/dev/vport1p1\n" and took < 0.5, done.stderr


def test_functions_are_filled_in() -> None:
    functions = FILES[FUNCTIONS_PATH.lstrip("/")][0]
    assert not re.search(r"@[A-Z_]+@", functions) and VM_MARKER in functions
    assert _sh(functions + "echo ok").stdout == "ok\n"


def test_container_detection() -> None:
    functions = FILES[FUNCTIONS_PATH.lstrip("/")][0]
    detect = functions + 'detect_container && echo "yes $container" || echo no'
    assert _sh(detect, container="podman").stdout.strip() == "yes podman"
    # Not started by PID 1 (run by hand, as here): never "vm" nor "container", whatever the host is.
    mode = functions + 'detect_mode; echo "$mode"'
    assert _sh(mode, container="podman").stdout.strip() == "other"


def test_outside_a_vm_the_boot_script_touches_nothing(tmp_path: Path) -> None:
    rcs = FILES["etc/init.d/rcS"][0]
    head, _ = rcs.split('if [ "$mode" = other ]; then', 1)
    assert "detect_mode" in head and "mount" not in head.split("detect_mode", 1)[1].split("if [", 1)[0]
    # The real functions, and in case their PID 1 guard failed, no container either: the host
    # running this test must never see its network or mounts touched.
    functions = FILES[FUNCTIONS_PATH.lstrip("/")][0] + "detect_container() { return 1; }\n"
    done = _sh(rcs.replace(". " + FUNCTIONS_PATH, functions))
    assert done.stdout == f"{READY_MARKER}\n", done.stderr


def test_initramfs_marks_the_vm() -> None:
    assert f": > {VM_MARKER}" in INITRAMFS_INIT
