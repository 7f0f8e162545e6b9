"""A VM's disk through a backup and back with qemu-img: every internal snapshot and the present come
back with exactly their content (`qemu-img compare`), however the states relate (a restore in
between, zeroed and discarded clusters), sharing what they shared; an incremental archive on top
of a full one reproduces the disk exactly; a disk whose header names a file that is not its
image's is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from virtkit.errors import RejectedError, StateError
from virtkit.model import InstanceKind, SnapshotRecord
from virtkit.storage import backupdisk, backupexport, backupplace, backupread
from virtkit.storage.backupexport import Parts, VmView
from virtkit.storage.backupformat import ImageEntry, InstanceEntry, SinceEntry
from virtkit.units import MiB

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                reason="needs qemu-img and qemu-io")  # fmt: skip

INSTANCE = InstanceEntry(name="vm1", kind=InstanceKind.VM, arch="x86_64", cpus=1, memory=1 << 28,
                         uuid="12345678-1234-1234-1234-123456789abc")  # fmt: skip


def qemu_io(disk: Path, *commands: str) -> None:
    args = [arg for command in commands for arg in ("-c", command)]
    subprocess.run(["qemu-io", "-f", "qcow2", *args, str(disk)], check=True, capture_output=True)


def img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def state_of(disk: Path, snapshot: str | None, out: Path) -> Path:
    img("convert", "-U", *(["-l", f"snapshot.name={snapshot}"] if snapshot else []), "-f", "qcow2", "-O",
        "qcow2", str(disk), str(out))  # fmt: skip
    return out


def same(one: Path, other: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", str(one), str(other)],
                          check=False).returncode == 0  # fmt: skip


def make_vm(home: Path, base: Path) -> list[SnapshotRecord]:
    """An image disk and a VM's overlay on it with snapshots s0, s1, s2 (s2 taken after restoring s0)."""
    base.parent.mkdir()
    img("create", "-q", "-f", "qcow2", str(base), "64M")
    qemu_io(base, "write -P 0x11 0 16M")
    home.mkdir()
    disk = home / "root.qcow2"
    img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(disk))
    snapshots = []
    steps = [["write -P 0x22 1M 2M"], ["write -P 0x33 8M 64k", "write -z 2M 64k", "discard 20M 1M"],
             ["write -P 0x44 30M 1M"]]  # fmt: skip
    for index, step in enumerate(steps):
        if index == 2:
            img("snapshot", "-a", "s0", str(disk))  # back to s0, then onwards: s2 does not contain s1
        qemu_io(disk, *step)
        img("snapshot", "-c", f"s{index}", str(disk))
        (home / "snapshots" / f"s{index}").mkdir(parents=True)
        (home / "snapshots" / f"s{index}" / "efivars.fd").write_bytes(bytes([index]) * 4096)
        snapshots.append(SnapshotRecord(instance="vm1", name=f"s{index}", disks=["root.qcow2"],
                                        files=["efivars.fd"], created_at=1000.0 + index))  # fmt: skip
    qemu_io(disk, "write -P 0x55 40M 3M", "write -z 1M 512k")
    (home / "efivars.fd").write_bytes(b"present" * 100)
    return snapshots


def round_trip(tmp: Path, view: VmView, snapshots: list[SnapshotRecord], name: str,
               since: SnapshotRecord | None = None) -> backupread.Staged:  # fmt: skip
    parts = Parts()
    staging = tmp / f"{name}-out"
    staging.mkdir()
    backupexport.gather_vm(view, snapshots, staging, tmp, parts, since=since)
    image = None
    if since is None:  # the image travels with a full backup
        backupexport.gather_tree("image", "image", view.image_disk.parent, None, parts)  # type: ignore[union-attr]
        image = ImageEntry(fingerprint="ab" * 32, name="img", kinds=[InstanceKind.VM], arch="x86_64",
                           format="qcow2", files={"disk": "disk.qcow2"}, virtual_size=64 * MiB)  # fmt: skip
    entries = backupexport.snapshot_entries(INSTANCE.uuid, snapshots if since is None else [])
    mark = SinceEntry(snapshot=since.name, origin="0" * 32) if since is not None else None
    document = backupexport.manifest(INSTANCE, image, entries, parts, mark)
    archive = backupexport.write(tmp / f"{name}.tar.zst", "zstd", document, parts)
    shutil.rmtree(staging)
    into = tmp / f"{name}-in"
    into.mkdir()
    staged = backupread.read(archive, into, check=lambda manifest: None)
    backupplace.check_disks(staged.manifest, staged)
    return staged


def test_every_state_comes_back_exactly(tmp_path: Path) -> None:
    home, base = tmp_path / "vm", tmp_path / "image" / "disk.qcow2"
    snapshots = make_vm(home, base)
    view = VmView(home, ("root.qcow2",), ("efivars.fd",), base, live=False)
    staged = round_trip(tmp_path, view, snapshots, "full")
    plans = backupplace.disk_plan(staged.manifest, "full")
    bases = [d.base for d in plans["root.qcow2"]]
    assert bases == ["image", "root.qcow2@s0", "root.qcow2@s1", "root.qcow2@s2"]
    for disk in staged.manifest.disks:  # no disk in an archive names another file
        assert "backing" not in img("info", str(staged.parts[disk.id]))
    built = backupplace.rebuild(plans, staged, base)["root.qcow2"]
    for snapshot in ("s0", "s1", "s2"):
        want = state_of(home / "root.qcow2", snapshot, tmp_path / f"want-{snapshot}.qcow2")
        got = state_of(built, snapshot, tmp_path / f"got-{snapshot}.qcow2")
        assert same(want, got), snapshot
    assert same(state_of(home / "root.qcow2", None, tmp_path / "want.qcow2"), built)
    assert staged.parts["efivars.fd@s1"].read_bytes() == bytes([1]) * 4096
    assert staged.parts["efivars.fd"].read_bytes() == b"present" * 100
    # what the snapshots share stays shared: far less than four copies of the 16 MiB written
    assert os.lstat(built).st_blocks * 512 < 16 * MiB


def test_an_incremental_on_top_of_a_full_reproduces_the_disk(tmp_path: Path) -> None:
    home, base = tmp_path / "vm", tmp_path / "image" / "disk.qcow2"
    snapshots = make_vm(home, base)
    view = VmView(home, ("root.qcow2",), ("efivars.fd",), base, live=False)
    full = round_trip(tmp_path, view, snapshots, "full")
    built = backupplace.rebuild(backupplace.disk_plan(full.manifest, "full"), full, base)["root.qcow2"]
    qemu_io(home / "root.qcow2", "write -P 0x66 50M 2M", "write -z 4M 1M", "discard 40M 1M")
    since = snapshots[2]
    incremental = round_trip(tmp_path, view, snapshots, "incremental", since=since)
    [delta] = incremental.manifest.disks
    assert delta.base == "root.qcow2@s2" and delta.state is None
    assert incremental.manifest.since is not None and not incremental.manifest.snapshots
    img("snapshot", "-a", "s2", str(built))
    backupdisk.apply_onto(incremental.parts[delta.id], built)
    assert same(state_of(home / "root.qcow2", None, tmp_path / "now.qcow2"), built)
    assert os.lstat(incremental.parts[delta.id]).st_size < 8 * MiB  # the changes only


def test_a_header_naming_another_file_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.qcow2"
    img("create", "-q", "-f", "qcow2", str(outside), "8M")
    root = tmp_path / "root"
    root.mkdir()
    disk = root / "root.qcow2"
    img("create", "-q", "-f", "qcow2", "-b", str(outside), "-F", "qcow2", str(disk))
    with pytest.raises(StateError, match="not a file of virtkit's"):
        backupdisk.DiskSource.of(disk, root / "image.qcow2", root, live=False)
    # the image's own disk as base: only the overlay's clusters are read, the base pinned
    source = backupdisk.DiskSource.of(disk, outside, root, live=False)
    assert source.base == outside and not source.chain


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_a_disk_without_snapshots_is_streamed_as_it_is(tmp_path: Path, compression: str) -> None:
    """No snapshot, VM stopped: the disk file itself goes out (header unlinked on the way), through
    a compressor of its own when big; it comes back as what it held, over the image."""
    base = tmp_path / "image" / "disk.qcow2"
    base.parent.mkdir()
    img("create", "-q", "-f", "qcow2", str(base), "256M")
    qemu_io(base, "write -P 0x11 0 8M")
    home = tmp_path / "vm"
    home.mkdir()
    disk = home / "root.qcow2"
    img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(disk))
    with open("/dev/urandom", "rb") as random:
        (tmp_path / "data.raw").write_bytes(random.read(80 * MiB))
    img("convert", "-n", "-f", "raw", "-O", "qcow2", str(tmp_path / "data.raw"), str(disk))
    qemu_io(disk, "write -P 0x22 100M 1M", "write -z 4M 1M")
    parts = Parts()
    view = VmView(home, ("root.qcow2",), (), base, live=False)
    backupexport.gather_vm(view, [], tmp_path, tmp_path, parts)
    assert parts.heads["root.qcow2"] and parts.disks[0][1] == disk  # the file itself, not a converted copy
    backupexport.gather_tree("image", "image", base.parent, None, parts)
    image = ImageEntry(fingerprint="ab" * 32, name="img", kinds=[InstanceKind.VM], arch="x86_64",
                       format="qcow2", files={"disk": "disk.qcow2"}, virtual_size=256 * MiB)  # fmt: skip
    document = backupexport.manifest(INSTANCE, image, [], parts)
    archive = backupexport.write(tmp_path / "big.tar", compression, document, parts)
    into = tmp_path / "in"
    into.mkdir()
    staged = backupread.read(archive, into, check=lambda manifest: None)
    backupplace.check_disks(staged.manifest, staged)
    built = backupplace.rebuild(backupplace.disk_plan(staged.manifest, "big"), staged, base)["root.qcow2"]
    assert same(state_of(disk, None, tmp_path / "want.qcow2"), built)
    # One byte flipped in the disk's stored bytes (the middle of the archive) is caught: by the
    # stored digest (storage/backupstored.py), or first by the compressor's own check.
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    (tmp_path / "again").mkdir()
    caught = "sha256 of its first" if compression == "none" else "sha256 of its first|truncated or corrupt"
    with pytest.raises(RejectedError, match=caught):
        backupread.read(archive, tmp_path / "again", check=lambda manifest: None)
