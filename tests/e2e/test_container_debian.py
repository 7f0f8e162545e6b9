"""A Debian system container as a user types it: systemd as PID 1 boots to `running` with its core
units active, `stop` halts it (SIGRTMIN+3: systemd's own shutdown, then it ends the container),
`start --wait` boots it again — real runc under conmon, on this cgroup v1 hybrid host.

The image is built once per module into the module's own state root (`virtkit image build debian
--flavour container`); the debootstrapped tree comes from the download cache (~/.cache/virtkit),
so after the first run on a machine the build is a copy of the tree, and the test takes well
under a minute (each boot ~4 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, debian_root

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and runc need root"),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="needs debootstrap"),
    pytest.mark.skipif(shutil.which("conmon") is None, reason="needs conmon"),
]

IMAGE = "debian-bookworm-container"
BOOT_TIMEOUT = 120  # seconds `--wait` allows; a boot takes ~4 s here
STOP_TIMEOUT = 60
# The units every booted Debian container runs: none may fail, whatever else does.
CORE_UNITS = (
    "systemd-journald.service", "dbus.service", "systemd-logind.service", "systemd-resolved.service",
    "ssh.service", "systemd-tmpfiles-setup.service", "systemd-user-sessions.service",
)  # fmt: skip


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Path]]:
    """A state root with the Debian container image."""
    yield from debian_root(tmp_path_factory, "container")


def _exec(virtkit: Cli, *command: str) -> subprocess.CompletedProcess[str]:
    return virtkit("exec", "d1", "--", *command, timeout=90)


def _assert_booted(virtkit: Cli) -> None:
    """systemd's boot is over (ready means that, not merely started) and nothing core failed."""
    state = _exec(virtkit, "systemctl", "is-system-running")
    failed = _exec(virtkit, "systemctl", "list-units", "--failed", "--plain", "--no-legend")
    print(f"is-system-running: {state.stdout.strip()}; failed units: {failed.stdout.strip() or 'none'}")
    assert state.stdout.strip() in ("running", "degraded"), (state.stdout, failed.stdout)
    failed_units = {line.split()[0] for line in failed.stdout.splitlines() if line.strip()}
    assert not failed_units & set(CORE_UNITS), failed.stdout
    active = _exec(virtkit, "systemctl", "is-active", *CORE_UNITS)
    assert active.stdout.split() == ["active"] * len(CORE_UNITS), active.stdout


def test_debian_container_boots_systemd_halts_and_boots_again(debian: tuple[Cli, Path]) -> None:
    virtkit, root = debian
    began = time.monotonic()
    launched = virtkit("launch", IMAGE, "d1", "--container", "--memory", "512MiB", "--wait",
                       timeout=BOOT_TIMEOUT + 60)  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    print(f"launch --wait: {time.monotonic() - began:.1f} s; {launched.stdout.strip()}")
    shown = json.loads(virtkit("show", "d1", "--json").stdout)
    assert shown["state"] == "running" and shown["kind"] == "container"
    assert 0 < shown["boot"]["spawn"] <= shown["boot"]["ready"] < BOOT_TIMEOUT

    assert _exec(virtkit, "cat", "/proc/1/comm").stdout.strip() == "systemd"
    _assert_booted(virtkit)
    # The runtime's hostname and environment, and cgroups systemd made for its own units.
    assert _exec(virtkit, "hostname").stdout.strip() == "d1"
    assert _exec(virtkit, "systemd-detect-virt", "--container").stdout.strip() == "container-other"
    assert "name=systemd:/init.scope" in _exec(virtkit, "cat", "/proc/1/cgroup").stdout
    console = root / "instances" / "d1" / "console.log"
    assert "VIRTKIT-READY running" in console.read_text(errors="replace")

    began = time.monotonic()
    stopped = virtkit("stop", "d1", "--timeout", str(STOP_TIMEOUT), timeout=STOP_TIMEOUT + 60)
    took = time.monotonic() - began
    assert stopped.returncode == 0, stopped.stderr
    print(f"stop (SIGRTMIN+3): {took:.1f} s")
    assert took < STOP_TIMEOUT / 2  # systemd halted by itself: no timeout, no forced kill
    tail = console.read_text(errors="replace").rstrip().splitlines()[-1]
    assert tail.endswith("Exiting container."), tail  # systemd-shutdown's last words
    assert json.loads(virtkit("show", "d1", "--json").stdout)["state"] == "stopped"

    began = time.monotonic()
    assert virtkit("start", "d1", "--wait", timeout=BOOT_TIMEOUT + 60).returncode == 0
    print(f"start --wait: {time.monotonic() - began:.1f} s")
    _assert_booted(virtkit)  # ready again means this boot's marker, not the last one's
    boots = console.read_text(errors="replace").count("VIRTKIT-READY")
    assert boots == 2, boots

    assert virtkit("delete", "--force", "d1", timeout=120).returncode == 0
    assert json.loads(virtkit("list", "--json").stdout) == []
