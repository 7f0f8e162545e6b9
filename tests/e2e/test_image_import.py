"""`virtkit image import` and `export` as a user types them, with good and hostile files."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture
def raw_disk(tmp_path: Path) -> Path:
    raw = tmp_path / "source.img"
    qemu_img("create", "-f", "raw", str(raw), "16M")
    with open(raw, "r+b") as handle:
        for offset in (0, 5 * 1024 * 1024, 16 * 1024 * 1024 - 4096):
            handle.seek(offset)
            handle.write(b"virtkit" * 512)
    return raw


def image_state(state_root: Path) -> tuple[list[str], list[str]]:
    images = state_root / "images"
    entries = sorted(p.name for p in images.iterdir()) if images.exists() else []
    staging = (
        sorted(p.name for p in (images / ".staging").iterdir()) if (images / ".staging").exists() else []
    )
    return entries, staging


def test_import_vmdk_then_export_and_reimport(virtkit: Cli, raw_disk: Path, tmp_path: Path) -> None:
    vmdk = tmp_path / "web-server.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", str(raw_disk), str(vmdk))
    result = virtkit("image", "import", str(vmdk), "--json")
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["aliases"] == ["web-server"] and record["format"] == "vmdk"
    assert record["virtual_size"] == 16 * 1024 * 1024
    listed = json.loads(virtkit("image", "list", "--json").stdout)
    assert [image["fingerprint"] for image in listed] == [record["fingerprint"]]
    show = virtkit("image", "show", "web-server")
    disk = next(line.split()[-1] for line in show.stdout.splitlines() if line.startswith("File disk"))
    compare = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw_disk), disk], capture_output=True
    )
    assert compare.returncode == 0, compare.stdout

    archive = tmp_path / "web.tar"
    assert virtkit("image", "export", "web-server", str(archive)).returncode == 0
    assert virtkit("image", "delete", "web-server").returncode == 0
    again = virtkit("image", "import", str(archive), "--name", "web", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[0]["fingerprint"] == record["fingerprint"]


def test_duplicate_alias_refused_before_work(virtkit: Cli, raw_disk: Path) -> None:
    assert virtkit("image", "import", str(raw_disk), "--name", "disk").returncode == 0
    assert_clear_error(virtkit("image", "import", str(raw_disk), "--name", "disk"), 1, "already names")


def test_rootfs_tarball(virtkit: Cli, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    (tree / "etc").mkdir()
    (tree / "etc" / "os-release").write_text('NAME="Test OS"\nVERSION_ID="1"\n')
    tarball = tmp_path / "testos.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tree, arcname=".")
    result = virtkit("image", "import", str(tarball), "--json")
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["kinds"] == ["container"] and record["files"] == {"rootfs": "rootfs"}


def test_hostile_imports_leave_nothing(
    virtkit: Cli, state_root: Path, raw_disk: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw_disk), str(base))
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay))
    truncated = tmp_path / "cut.qcow2"
    truncated.write_bytes(base.read_bytes()[: base.stat().st_size // 2])
    garbage = tmp_path / "garbage.vhdx"
    garbage.write_bytes(b"\x00not a disk" * 1000)
    escape = tmp_path / "escape.tar"
    with tarfile.open(escape, "w") as archive:
        info = tarfile.TarInfo("../../outside")
        info.size = 0
        archive.addfile(info)
    assert virtkit("image", "list").returncode == 0
    before = image_state(state_root)
    cases = [
        (overlay, "backing file"),
        (truncated, "truncated"),
        (garbage, "not a VHDX"),
        (escape, ".."),
        (tmp_path / "missing.qcow2", "no such file"),
    ]
    for path, needle in cases:
        result = virtkit("image", "import", str(path))
        assert result.returncode == 1, (path, result.stderr)
        assert needle in result.stderr, (path, result.stderr)
        assert "Traceback" not in result.stderr
        assert image_state(state_root) == before, path
    assert json.loads(virtkit("image", "list", "--json").stdout) == []
    assert not (tmp_path / "outside").exists()


def test_bad_format_option(virtkit: Cli, raw_disk: Path) -> None:
    assert_clear_error(
        virtkit("image", "import", str(raw_disk), "--format", "floppy"), 2, "unknown image format"
    )
