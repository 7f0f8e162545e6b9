"""`virtkit image build tiny|debian` as a user runs them (the download cache makes reruns quick)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error


def test_build_tiny_then_list(virtkit: Cli, state_root: Path) -> None:
    result = virtkit("image", "build", "tiny", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Image tiny" in result.stdout
    (image,) = json.loads(virtkit("image", "list", "--json").stdout)
    assert image["aliases"] == ["tiny"]
    assert sorted(image["kinds"]) == ["container", "vm"]
    assert set(image["files"]) == {"disk", "kernel", "initrd", "rootfs"}
    base = state_root / "images" / image["fingerprint"]
    for name in image["files"].values():
        assert (base / name).exists()
    check = subprocess.run(
        ["qemu-img", "check", "-f", "qcow2", str(base / "disk.qcow2")], capture_output=True
    )
    assert check.returncode == 0
    assert (base / "rootfs" / "sbin" / "init").exists()

    again = virtkit("image", "build", "tiny", "--json", timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""  # --json is quiet
    rebuilt = json.loads(again.stdout)[0]
    assert rebuilt["aliases"] == ["tiny"]
    listed = json.loads(virtkit("image", "list", "--json").stdout)
    assert [i["fingerprint"] for i in listed] == [rebuilt["fingerprint"]]  # no nameless leftovers


def test_build_debian_makes_vm_and_container_images(virtkit: Cli) -> None:
    result = virtkit("image", "build", "debian", "--json", timeout=1200)
    assert result.returncode == 0, result.stderr
    vm, container = json.loads(result.stdout)
    assert vm["aliases"] == ["debian-bookworm"] and vm["kinds"] == ["vm"]
    assert set(vm["files"]) == {"disk", "kernel", "initrd"}
    assert container["aliases"] == ["debian-bookworm-container"] and container["kinds"] == ["container"]
    assert set(container["files"]) == {"rootfs"}


def test_bad_build_arguments(virtkit: Cli, state_root: Path) -> None:
    assert_clear_error(virtkit("image", "build", "debian", "--release", "../etc"), 2, "release")
    assert_clear_error(virtkit("image", "build", "debian", "--packages", "ok,Bad_Pkg;rm"), 2, "package")
    bad_arch = virtkit("image", "build", "tiny", "--arch", "mips")
    assert bad_arch.returncode == 2 and "Traceback" not in bad_arch.stderr
    assert json.loads(virtkit("image", "list", "--json").stdout) == []
