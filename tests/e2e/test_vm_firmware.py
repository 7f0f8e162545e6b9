"""Firmware boot paths as a user types them, proven by real boots (TCG): SeaBIOS through extlinux
on an imported disk, isolinux install media with an empty disk, OVMF through systemd-boot on an
EFI system partition — and the requests that cannot boot, refused before anything is made.

The media are made in the test from the tiny image's own kernel and initrd (tests/e2e/bootdisk.py);
each loader names itself as the guest's host name, so the shell prompt on the serial console
("extlinux:/#") proves which path booted it.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import bootdisk
from tests.e2e.bootdisk import Payload
from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import state_of, tiny  # noqa: F401  (the fixture)
from tests.permissions import reachable

GiB = 1024**3
BOOT_TIMEOUT = 180.0  # firmware, then a bzImage decompressing itself, all under TCG on a busy host


def require(kind: str) -> None:
    missing = bootdisk.missing(kind)
    if missing:
        pytest.fail(f"making {kind} boot media needs: apt-get install {' '.join(missing)} (scripts/dev.sh)")


def tiny_payload(virtkit: Cli, state_root: Path) -> Payload:
    """The tiny image's kernel and initrd, where `virtkit image show` says they are."""
    shown = virtkit("image", "show", "tiny", "--json")
    assert shown.returncode == 0, shown.stderr
    image = json.loads(shown.stdout)
    directory = state_root / "images" / image["fingerprint"]
    return Payload(directory / image["files"]["kernel"], directory / image["files"]["initrd"])


def media_dir(tmp_path: Path) -> Path:
    """Where the test's media live: a directory QEMU's unprivileged user can reach (--iso FILE is
    used in place)."""
    directory = reachable(tmp_path / "media")
    directory.mkdir(mode=0o755)
    return directory


def wait_console(virtkit: Cli, name: str, *needles: str, timeout: float = BOOT_TIMEOUT) -> str:
    """`virtkit console NAME --log` once it shows every needle (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        result = virtkit("console", name, "--log")
        assert result.returncode == 0, result.stderr
        if all(needle in result.stdout for needle in needles):
            return result.stdout
        if time.monotonic() >= deadline:
            pytest.fail(f"{name}'s console never showed {needles} in {timeout:g} s:\n{result.stdout[-2000:]}")
        time.sleep(0.5)


def in_order(text: str, *needles: str) -> bool:
    places = [text.find(needle) for needle in needles]
    return -1 not in places and places == sorted(places)


def launch(virtkit: Cli, *args: str) -> None:
    launched = virtkit("launch", *args, "--vm", "--wait", timeout=BOOT_TIMEOUT + 60)
    assert launched.returncode == 0, launched.stderr


def disk_info(state_root: Path, name: str) -> dict[str, object]:
    """`qemu-img info` of a running VM's root disk (-U: QEMU holds its lock)."""
    disk = state_root / "instances" / name / "root.qcow2"
    done = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(disk)], capture_output=True, text=True, check=True
    )
    info: dict[str, object] = json.loads(done.stdout)
    return info


def machine_of(virtkit: Cli, name: str) -> str:
    shown = virtkit("show", name)
    assert shown.returncode == 0, shown.stderr
    lines = [line.split(":", 1)[1].strip() for line in shown.stdout.splitlines()
             if line.startswith("Machine:")]  # fmt: skip
    assert len(lines) == 1, shown.stdout
    return lines[0]


def delete(virtkit: Cli, state_root: Path, name: str) -> None:
    assert virtkit("delete", "--force", name, timeout=60).returncode == 0
    assert not (state_root / "instances" / name).exists()
    assert json.loads(virtkit("list", "--json").stdout) == []


def test_bios_boots_an_imported_disk_through_extlinux(tiny: Cli, state_root: Path, tmp_path: Path) -> None:  # noqa: F811
    require("bios")
    disk = bootdisk.bios_disk(media_dir(tmp_path) / "extlinux.img", tiny_payload(tiny, state_root))
    imported = tiny("image", "import", str(disk), "--name", "bootdisk", timeout=120)
    assert imported.returncode == 0, imported.stderr
    launch(tiny, "bootdisk", "b1", "--firmware", "bios")

    log = wait_console(tiny, "b1", "VIRTKIT-READY", "extlinux:/#")
    # SeaBIOS (its screen mirrored on the serial console), extlinux's banner, the tiny guest.
    assert in_order(log, "SeaBIOS", "Booting from Hard Disk", "SYSLINUX 6.04", "VIRTKIT-READY", "extlinux:/#")
    assert machine_of(tiny, "b1") == "q35"
    shown = state_of(tiny, "b1")
    config, live = shown["config"], shown["live"]
    assert isinstance(config, dict) and isinstance(live, dict)
    assert (config["firmware"], live["machine"]) == ("bios", "q35")
    runtime = tiny("show", "b1", "--runtime").stdout
    assert "-kernel" not in runtime and "bootindex=1" in runtime
    backing = str(disk_info(state_root, "b1")["backing-filename"])
    assert "/images/" in backing and backing.endswith("/disk.qcow2")  # the imported disk, under an overlay
    delete(tiny, state_root, "b1")


def test_install_media_boot_first_with_an_empty_disk(tiny: Cli, state_root: Path, tmp_path: Path) -> None:  # noqa: F811
    require("iso")
    payload = tiny_payload(tiny, state_root)
    iso = bootdisk.install_iso(media_dir(tmp_path) / "tiny-install.iso", payload, tmp_path)
    # An ISO install: the ISO imported is the image; the VM gets an empty disk of --disk size.
    imported = tiny("image", "import", str(iso), "--name", "tiny-install", timeout=120)
    assert imported.returncode == 0, imported.stderr
    launch(tiny, "tiny-install", "i1", "--disk", "1GiB")
    log = wait_console(tiny, "i1", "VIRTKIT-READY", "isolinux:/#")
    assert in_order(log, "SeaBIOS", "Booting from DVD/CD", "ISOLINUX 6.04", "VIRTKIT-READY")
    info = disk_info(state_root, "i1")
    assert (info["format"], info["virtual-size"], info.get("backing-filename")) == ("qcow2", GiB, None)
    assert isinstance(info["actual-size"], int) and info["actual-size"] < 1024**2  # nothing written
    assert machine_of(tiny, "i1") == "q35"
    delete(tiny, state_root, "i1")

    # --iso FILE: media used in place, booted before the image's own disk (here tiny's, whose
    # kernel would otherwise be booted directly and name the guest r1).
    launch(tiny, "tiny", "r1", "--iso", str(iso))  # --wait: until the guest's readiness marker
    log = wait_console(tiny, "r1", "isolinux:/#")
    assert in_order(log, "Booting from DVD/CD", "ISOLINUX 6.04", "VIRTKIT-READY") and "r1:/#" not in log
    runtime = tiny("show", "r1", "--runtime").stdout
    assert f"file.filename={iso}" in runtime and "-kernel" not in runtime
    assert str(disk_info(state_root, "r1")["backing-filename"]).endswith("/disk.qcow2")
    delete(tiny, state_root, "r1")


def test_uefi_boots_an_efi_system_partition(tiny: Cli, state_root: Path, tmp_path: Path) -> None:  # noqa: F811
    require("uefi")
    disk = bootdisk.uefi_disk(media_dir(tmp_path) / "esp.img", tiny_payload(tiny, state_root), tmp_path)
    imported = tiny("image", "import", str(disk), "--name", "espdisk", timeout=120)
    assert imported.returncode == 0, imported.stderr
    launch(tiny, "espdisk", "u1", "--firmware", "uefi")
    log = wait_console(tiny, "u1", "VIRTKIT-READY", "systemd-boot:/#")
    # OVMF's boot manager started the disk's removable-media loader; systemd-boot its entry.
    assert in_order(log, "BdsDxe: starting Boot", "VIRTKIT-READY", "systemd-boot:/#")
    assert machine_of(tiny, "u1") == "q35"
    assert (state_root / "instances" / "u1" / "efivars.fd").is_file()
    runtime = tiny("show", "u1", "--runtime").stdout
    assert "pflash0=uefi-code,pflash1=uefi-vars" in runtime and "OVMF_CODE" in runtime
    delete(tiny, state_root, "u1")


def test_what_cannot_boot_is_refused_and_leaves_nothing(tiny: Cli, state_root: Path, tmp_path: Path) -> None:  # noqa: F811
    require("iso")
    media = media_dir(tmp_path)
    data_cd = bootdisk.data_iso(media / "data.iso", tmp_path)
    notes = media / "notes.iso"
    notes.write_text("not install media\n" * 2000)
    built = tiny("image", "build", "tiny", "--arch", "aarch64", timeout=300)
    assert built.returncode == 0, built.stderr
    refused = [
        (("--iso", str(media / "missing.iso")), "does not exist"),
        (("--iso", str(media)), "is a directory"),
        (("--iso", str(notes)), "is not an ISO 9660 image"),
        (("--iso", str(data_cd)), "no El Torito boot record"),
        (("--firmware", "bios", "--arch", "aarch64"), "aarch64 VMs boot with UEFI firmware only"),
        (("--machine", "q35", "--arch", "aarch64"), "the q35 machine cannot run aarch64 guests"),
        (("--machine", "microvm", "--firmware", "bios"), "the microvm machine boots a kernel directly"),
        (("--machine", "virt"), "the virt machine cannot run x86_64 guests"),
        (("--firmware", "uefi"), "its disk has no bootloader for uefi firmware"),
    ]
    for options, message in refused:
        for verb in ("launch", "create"):
            assert_clear_error(tiny(verb, "tiny", "x1", "--vm", *options), 2, message)
            assert not (state_root / "instances" / "x1").exists()
    assert json.loads(tiny("list", "--json").stdout) == []
    # A file where an image is expected: not found, and told how to make it one.
    assert_clear_error(tiny("launch", str(data_cd), "x1", "--vm"), 1, "not found", "virtkit image import")
