"""A qcow2 disk as a raw file through qemu-storage-daemon (storage/fuseexport.py), for real."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from virtkit.errors import ToolError
from virtkit.storage import fuseexport

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (FUSE mounts)")


def _qcow2(path: Path, size: str = "8M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def _daemons(disk: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"qemu-storage-daemon.*{disk}"], capture_output=True, text=True)
    return found.stdout.split()


def _export(
    disk: Path, *, writable: bool, what: str = "the disk", standalone: bool = False
) -> contextlib.AbstractContextManager[Path]:
    node = fuseexport.qcow2_node(disk, writable=writable, standalone=standalone)
    return fuseexport.exported(node, writable=writable, what=what)


def test_writes_land_and_the_disk_is_free_at_once_every_time(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path / "d.qcow2")
    for round_ in range(40):  # a lock left behind showed in 1-7% of rounds
        with _export(disk, writable=True) as raw:
            assert raw.stat().st_size == 8 << 20
            with open(raw, "r+b") as f:
                f.seek(round_ << 16)
                f.write(b"round %02d" % round_)
            point = raw
        # the daemon's image lock is gone: a writer can open the disk at once
        subprocess.run(["qemu-io", "-c", "write -P 7 7M 4k", str(disk)], check=True, capture_output=True)
        assert not point.exists() and _daemons(disk) == []
    subprocess.run(["qemu-img", "check", "-q", str(disk)], check=True, capture_output=True)
    out = tmp_path / "d.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(out)], check=True)
    data = out.read_bytes()
    assert all(data[r << 16 : (r << 16) + 8] == b"round %02d" % r for r in range(40))


def test_a_read_only_export_cannot_be_written(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path / "d.qcow2")
    before = disk.read_bytes()
    with _export(disk, writable=False) as raw:
        with pytest.raises(OSError), open(raw, "r+b") as f:
            f.write(b"x")
        assert raw.read_bytes()[:16] == bytes(16)
    assert disk.read_bytes() == before and _daemons(disk) == []


@pytest.mark.parametrize("content", [b"", b"not a qcow2 at all" * 100, b"QFI\xfb" + bytes(60)])
def test_a_broken_or_missing_disk_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    disk = tmp_path / "bad.qcow2"
    disk.write_bytes(content)
    bad = _export(disk, writable=True, what="the bad disk")
    with pytest.raises(ToolError, match=r"exporting the bad disk failed: .+"), bad:
        pass
    assert disk.read_bytes() == content and _daemons(disk) == []
    missing = _export(tmp_path / "none", writable=False, what="the missing disk")
    with pytest.raises(ToolError, match="exporting the missing disk failed"), missing:
        pass


def test_a_standalone_export_never_follows_the_header_to_another_file(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"host secret!" * 1000)
    disk = tmp_path / "imported.qcow2"  # a disk from outside whose header names a host file
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(disk)],
                   check=True)  # fmt: skip
    with _export(disk, writable=False) as raw:  # a chain of ours: the header is followed
        assert raw.read_bytes()[:12] == b"host secret!"
    with _export(disk, writable=False, standalone=True) as raw:
        assert raw.read_bytes() == bytes(raw.stat().st_size)
