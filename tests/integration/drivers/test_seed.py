"""The NoCloud seed made for real: xorriso writes it, blkid and xorriso read it back; `prepare` makes
it for images with cloud-init, and a failure leaves neither seed nor root disk behind."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from virtkit import cloudinit
from virtkit.drivers.base import InstancePaths
from virtkit.drivers.qemu import QemuDriver
from virtkit.drivers.qemu import driver as driver_module
from virtkit.drivers.qemu.plan import VmFiles
from virtkit.drivers.qemu.seed import make_seed
from virtkit.errors import ToolError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord

pytestmark = [
    pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso"),
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-utils"),
]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHjGR4SSnOlVaFDWUHIQ+LiFIL/kkHKyr1HM6XPXg1YZ tester@host"


def _read(iso: Path, name: str) -> bytes:
    """A file of the volume, extracted to a file beside it (xorriso replaces the target path)."""
    out = iso.parent / f".extracted-{name}"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", f"/{name}", str(out)],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    data = out.read_bytes()
    out.unlink()
    return data


def _probe(iso: Path) -> dict[str, str]:
    done = subprocess.run(["blkid", "-o", "export", str(iso)], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_the_seed_is_an_iso9660_volume_labelled_cidata(tmp_path: Path) -> None:
    files = {"meta-data": b'{"instance-id": "u-1"}\n', "user-data": b"#cloud-config\n{}\n"}
    make_seed(tmp_path / "seed.iso", files)
    probed = _probe(tmp_path / "seed.iso")
    assert (probed["TYPE"], probed["LABEL"]) == ("iso9660", "cidata")
    for name, data in files.items():
        assert _read(tmp_path / "seed.iso", name) == data  # Rock Ridge keeps the names' dashes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]  # no work files left


def _debian_like(tmp_path: Path) -> tuple[ImageRecord, Path]:
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(image_dir / "disk.qcow2"), "64M"], check=True
    )
    for name in ("vmlinuz", "initrd.img"):
        (image_dir / name).touch()
    image = ImageRecord(
        fingerprint="ef" * 32, name="debian-bookworm", kinds=[InstanceKind.VM], format="debian",
        virtual_size=64 << 20, files={"disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img"},
        properties={"cloud_init": "nocloud", "agent_port": "org.qemu.guest_agent.0"},
    )  # fmt: skip
    return image, image_dir


def test_prepare_makes_the_seed_from_what_the_user_gave(tmp_path: Path) -> None:
    image, image_dir = _debian_like(tmp_path)
    record = InstanceRecord(name="d1", kind=InstanceKind.VM, config={"ssh_keys": "described"})
    paths = InstancePaths.of(tmp_path / "root", "d1")
    paths.dir.mkdir(parents=True)
    cloudinit.save(cloudinit.UserInput(b"#!/bin/sh\necho hi\n", (KEY,)), paths.dir)
    QemuDriver().prepare(record, image, image_dir, paths)
    seed = VmFiles(paths).seed
    assert seed.stat().st_mode & 0o777 == 0o644  # QEMU's own user reads it; the directory guards it
    meta = json.loads(_read(seed, "meta-data").decode().split("\n", 1)[1])
    assert meta == {"instance-id": record.uuid, "local-hostname": "d1", "public-keys": [KEY]}
    assert _read(seed, "user-data") == b"#!/bin/sh\necho hi\n"


def test_a_failed_seed_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, image_dir = _debian_like(tmp_path)
    record = InstanceRecord(name="d1", kind=InstanceKind.VM)
    paths = InstancePaths.of(tmp_path / "root", "d1")
    paths.dir.mkdir(parents=True)

    def broken(path: Path, files: dict[str, bytes]) -> None:
        path.write_bytes(b"half")
        raise ToolError("making the cloud-init seed: xorriso failed (exit 5): no space left")

    monkeypatch.setattr(driver_module, "make_seed", broken)
    with pytest.raises(ToolError, match="xorriso failed"):
        QemuDriver().prepare(record, image, image_dir, paths)
    assert list(paths.dir.iterdir()) == []
