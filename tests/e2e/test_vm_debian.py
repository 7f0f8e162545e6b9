"""The Debian VM as a user types it: `virtkit launch debian-bookworm` with cloud-init user-data and
an SSH key, ready when qemu-guest-agent answers, then exec, a graceful stop and delete; and
cloud-init inputs refused before anything is made.

The Debian VM is launched with a 4 GiB root disk: cloud-init's resizefs grows its root filesystem
to fill it on first boot (tests/e2e/test_vm_disk.py proves it for the tiny image).

The image is built once per module into the module's own state root (`virtkit image build debian
--flavour vm`); the debootstrapped tree comes from the download cache (~/.cache/virtkit), so
after the first run on a machine this takes well under a minute. The guest boots under TCG here.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and QEMU's confinement need root"),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="needs debootstrap"),
    pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso (the cloud-init seed)"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHjGR4SSnOlVaFDWUHIQ+LiFIL/kkHKyr1HM6XPXg1YZ tester@host"
USER_DATA = """#cloud-config
write_files:
  - path: /etc/virtkit-e2e
    content: "written by write_files\\n"
runcmd:
  - [sh, -c, "echo ran as $(id -un) > /var/tmp/runcmd-done"]
"""
LAUNCH_TIMEOUT = 600.0  # the build is already done; the boot under TCG on a busy 2-core host
GiB = 1 << 30
STOP_TIMEOUT = 120  # seconds `virtkit stop` waits for the guest to power off before forcing it


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    key, user_data = tmp_path / "k.pub", tmp_path / "ud.yaml"
    key.write_text(KEY + "\n")
    user_data.write_text(USER_DATA)
    return key, user_data


def _exec(virtkit: Cli, *command: str, timeout: float = 60) -> str:
    done = virtkit("exec", "d1", "--timeout", str(timeout), "--", *command, timeout=timeout + 30)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done.stdout


def test_launch_with_cloud_init_exec_stop_delete(debian: tuple[Cli, Path], tmp_path: Path) -> None:
    virtkit, root = debian
    key, user_data = _inputs(tmp_path)
    began = time.monotonic()
    launched = virtkit(
        "launch", "debian-bookworm", "d1", "--vm", "--memory", "512MiB", "--disk", "4GiB", "--wait",
        "--ssh-key", str(key), "--user-data", str(user_data), timeout=LAUNCH_TIMEOUT,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    print(f"launch --wait: {time.monotonic() - began:.1f} s; {launched.stdout.strip()}")
    shown = json.loads(virtkit("show", "d1", "--json").stdout)
    assert shown["state"] == "running"
    assert list(shown["boot"]) == ["spawn", "kernel", "ready"]
    assert 0 < shown["boot"]["spawn"] <= shown["boot"]["kernel"] <= shown["boot"]["ready"]
    assert shown["config"]["user_data"].startswith("ud.yaml (")
    assert "SHA256:f6dq5QioNFx6lAuRRJ+UAkhqJzUyfFhC2jeIJ0dmSwQ tester@host" in shown["config"]["ssh_keys"]
    user_data.unlink()  # the instance has its own copy
    key.unlink()

    # Ready means the guest agent answers; by then cloud-init's first stage set the hostname,
    # wrote the files and authorized the key. runcmd comes in its last stage.
    assert _exec(virtkit, "hostname").strip() == "d1"
    assert KEY in _exec(virtkit, "cat", "/home/debian/.ssh/authorized_keys")
    assert _exec(virtkit, "cat", "/etc/virtkit-e2e") == "written by write_files\n"
    # --disk grew the root disk; cloud-init's resizefs (its init stage too) grew / to fill it
    image = json.loads(virtkit("image", "show", "debian-bookworm", "--json").stdout)
    size = int(_exec(virtkit, "df", "-k", "/").splitlines()[-1].split()[1]) * 1024
    assert image["virtual_size"] < 2 * GiB and 0.95 * 4 * GiB < size <= 4 * GiB, size
    logged = _exec(virtkit, "grep", "-h", "cc_resizefs", "/var/log/cloud-init.log")
    assert "Resizing / (ext4) using resize2fs /dev/vda" in logged and "Resized root filesystem" in logged
    status = _exec(virtkit, "cloud-init", "status", "--wait", "--long", timeout=300)
    assert "status: done" in status and "DataSourceNoCloud" in status, status
    assert _exec(virtkit, "cat", "/var/tmp/runcmd-done") == "ran as root\n"

    # A running VM with qemu-guest-agent is exported with its filesystems frozen, then thawed.
    exported = virtkit("export", "d1", str(tmp_path / "d1.tar.zst"), "--instance-only", timeout=600)
    assert exported.returncode == 0, exported.stderr
    assert "guest filesystem(s) frozen while captured" in exported.stdout, exported.stdout
    assert _exec(virtkit, "sh", "-c", "echo thawed > /var/tmp/after; sync; cat /var/tmp/after") == "thawed\n"
    (tmp_path / "d1.tar.zst").unlink()
    # So is a snapshot of it: consistent, not a power cut to replay.
    snapped = virtkit("snapshot", "create", "d1", "calm", timeout=300)
    assert snapped.returncode == 0, snapped.stderr
    assert "Note: disk-only, " in snapped.stdout and "frozen while captured" in snapped.stdout, snapped.stdout
    assert "power cut" not in snapped.stdout, snapped.stdout
    assert _exec(virtkit, "sh", "-c", "echo again > /var/tmp/after; sync; cat /var/tmp/after") == "again\n"

    began = time.monotonic()
    stopped = virtkit("stop", "d1", "--timeout", str(STOP_TIMEOUT), timeout=STOP_TIMEOUT + 60)
    took = time.monotonic() - began
    assert stopped.returncode == 0, stopped.stderr
    print(f"graceful stop: {took:.1f} s")
    assert took < STOP_TIMEOUT
    # The guest powered itself off (ACPI power button): its kernel's last words are on the console.
    console = (root / "instances" / "d1" / "console.log").read_text(errors="replace")
    assert "reboot: Power down" in console, console[-3000:]
    assert json.loads(virtkit("show", "d1", "--json").stdout)["state"] == "stopped"

    deleted = virtkit("delete", "d1", timeout=60)
    assert deleted.returncode == 0, deleted.stderr
    assert not (root / "instances" / "d1").exists()
    assert json.loads(virtkit("list", "--json").stdout) == []


def test_emulated_devices_boot_debian_to_a_login(debian: tuple[Cli, Path]) -> None:
    """No virtio at all (AHCI disk, 16550 serial, the seed on an AHCI CD-ROM): what an old system or
    a P2V import gets. Without virtio-serial there is no guest agent: the login prompt says it booted."""
    virtkit, root = debian
    launch = ("launch", "debian-bookworm", "e1", "--vm", "--devices", "emulated", "--memory", "512MiB")
    launched = virtkit(*launch)
    assert launched.returncode == 0, launched.stderr
    runtime = virtkit("show", "e1", "--runtime").stdout
    assert "virtio" not in runtime and "ide-hd" in runtime and "ide-cd" in runtime
    console = root / "instances" / "e1" / "console.log"
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while "e1 login:" not in console.read_text(errors="replace"):  # the hostname came from the seed
        assert time.monotonic() < deadline, console.read_text(errors="replace")[-3000:]
        time.sleep(1)
    stopped = virtkit("stop", "e1", "--timeout", str(STOP_TIMEOUT), timeout=STOP_TIMEOUT + 60)
    assert stopped.returncode == 0, stopped.stderr
    assert "reboot: Power down" in console.read_text(errors="replace")  # ACPI worked without virtio
    assert virtkit("delete", "e1").returncode == 0


def test_bad_cloud_init_inputs_leave_nothing(debian: tuple[Cli, Path], tmp_path: Path) -> None:
    virtkit, root = debian
    key, user_data = _inputs(tmp_path)
    garbage, huge, private = tmp_path / "garbage.bin", tmp_path / "huge.yaml", tmp_path / "id_ed25519"
    garbage.write_bytes(bytes(range(256)) * 16)
    huge.write_text("#cloud-config\n" + "# padding\n" * 120_000)
    private.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    launch = ("launch", "debian-bookworm", "x1", "--vm", "--memory", "512MiB", "--wait")
    cases = [
        (("--user-data", str(tmp_path / "missing.yaml")), "does not exist"),
        (("--user-data", str(garbage)), "is not text"),
        (("--user-data", str(huge)), "is bigger than 1MiB"),
        (("--user-data", str(key)), "cloud-init would ignore it"),
        (("--ssh-key", str(user_data)), "is not an OpenSSH public key"),
        (("--ssh-key", str(private)), "is a private key"),
        (("--ssh-key", str(key), "--ssh-key", str(garbage)), "is not text"),
    ]
    for options, says in cases:
        assert_clear_error(virtkit(*launch, *options), 2, says)
        assert json.loads(virtkit("list", "--json").stdout) == []
        assert not (root / "instances" / "x1").exists()
    dry = virtkit(*launch[:-1], "--dry-run", "--user-data", str(garbage))  # refused before any preview
    assert_clear_error(dry, 2, "is not text")
