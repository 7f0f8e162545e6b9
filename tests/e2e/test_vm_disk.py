"""A VM's root disk size as a user types it: `virtkit launch IMAGE NAME --vm --disk SIZE` grows the
root disk and the guest grows its filesystem to fill it on first boot, proven inside the guest with
`df`: the tiny image (its initramfs runs resize2fs online, saying so on the console; virtio on
microvm, AHCI on q35, and an aarch64 guest); the Debian image's (cloud-init's resizefs) is proven in
tests/e2e/test_vm_debian.py, on the boot that test makes anyway. A bad size is refused in one or two
lines and leaves no instance behind.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import tiny  # noqa: F401  (the fixture)

MiB = 1 << 20
GiB = 1 << 30
GROWN = re.compile(r"virtkit: root filesystem on (/dev/[a-z]+) grown online to ([0-9]+) MiB in [0-9.]+ s")


def ok(cli: Cli, *args: str, timeout: float = 180) -> str:
    done = cli(*args, timeout=timeout)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def root_size(cli: Cli, name: str) -> int:
    """Bytes of the filesystem mounted at / in the guest, as `df -k /` gives them."""
    lines = ok(cli, "exec", name, "--", "df", "-k", "/").splitlines()
    return int(lines[-1].split()[1]) * 1024


def console(state_root: Path, name: str) -> str:
    return (state_root / "instances" / name / "console.log").read_text(errors="replace")


def test_tiny_vm_grows_its_root_filesystem_to_the_disk_on_first_boot(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny, "launch", "tiny", "v1", "--vm", "--disk", "1GiB", "--wait")
    size = root_size(tiny, "v1")
    assert 0.95 * GiB < size <= GiB, size  # ext4's own metadata and journal take the rest
    assert GROWN.findall(console(state_root, "v1")) == [("/dev/vda", "1024")]
    ok(tiny, "exec", "v1", "--", "sh", "-c", "echo kept > /root/mark && sync")

    # The next boot finds the filesystem already filling the disk: nothing to do, nothing said.
    ok(tiny, "stop", "v1", "--timeout", "60", timeout=90)
    (state_root / "instances" / "v1" / "console.log").write_text("")
    ok(tiny, "start", "v1", "--wait")
    assert root_size(tiny, "v1") == size
    assert ok(tiny, "exec", "v1", "--", "cat", "/root/mark") == "kept\n"
    log = console(state_root, "v1")
    assert "VIRTKIT-READY" in log and "growing the root filesystem" not in log, log[-2000:]


def test_without_disk_the_image_size_is_kept(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny, "launch", "tiny", "v2", "--vm", "--wait")
    assert root_size(tiny, "v2") < 64 * MiB
    assert "growing the root filesystem" not in console(state_root, "v2")


def test_an_emulated_ahci_disk_grows_too(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny, "launch", "tiny", "v3", "--vm", "--machine", "q35", "--devices", "emulated",
       "--disk", "512MiB", "--wait")  # fmt: skip
    # No virtio-serial, so no exec: the console says what the filesystem's superblock now holds.
    assert GROWN.findall(console(state_root, "v3")) == [("/dev/sda", "512")]


@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="needs qemu-system-arm")
def test_an_aarch64_guest_grows_with_debian_s_arm64_resize2fs(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny, "image", "build", "tiny", "--arch", "aarch64", timeout=600)
    ok(tiny, "launch", "tiny", "a1", "--vm", "--arch", "aarch64", "--disk", "1GiB", "--wait")
    assert ok(tiny, "exec", "a1", "--", "uname", "-m") == "aarch64\n"
    assert 0.95 * GiB < root_size(tiny, "a1") <= GiB
    assert GROWN.findall(console(state_root, "a1")) == [("/dev/vda", "1024")]


@pytest.mark.parametrize(
    ("size", "said"),
    [
        ("0", "invalid disk size 0: must be at least"),
        ("-1", "sizes cannot be negative"),
        ("abc", "invalid disk size 'abc'"),
        ("1.5", "not a whole number of bytes"),
        ("1PiB", "disk size 1PiB is more than a root disk may have (64TiB)"),
        ("32MiB", "disk size 32MiB is smaller than image tiny's 64MiB"),
    ],
)
def test_a_bad_disk_size_is_refused_and_leaves_nothing(
    tiny: Cli, state_root: Path, size: str, said: str  # noqa: F811
) -> None:
    done = tiny("launch", "tiny", "bad", "--vm", f"--disk={size}", timeout=120)
    assert_clear_error(done, 2, said)
    assert json.loads(ok(tiny, "list", "--json")) == []
    assert not (state_root / "instances" / "bad").exists()


def test_disk_for_a_container_is_refused(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    done = tiny("launch", "tiny", "c1", "--container", "--disk", "1GiB", timeout=60)
    assert_clear_error(done, 2, "--disk sizes a VM's root disk")
    assert json.loads(ok(tiny, "list", "--json")) == []
