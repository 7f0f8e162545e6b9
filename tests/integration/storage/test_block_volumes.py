"""Block volumes for real: qcow2 disks made and resized by qemu-img in real pool directories, data
kept across a grow, a shrink only when forced, and every failure leaving no file and no record."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.errors import ConflictError, SpecError, StateError, ToolError
from virtkit.model import GiB, MiB, VolumeRecord
from virtkit.ops.storage import Storage
from virtkit.storage import volumes
from virtkit.store import SqliteStore, open_store

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    with open_store(tmp_path / "root") as store:
        yield Storage(tmp_path / "root", store)


def info(path: Path) -> dict[str, object]:
    done = subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(path)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout)
    return result


def write_at(path: Path, offset: int, data: bytes) -> None:
    """Write guest data into the disk through qemu-io, as a guest would."""
    pattern = data[0]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {len(data)}", str(path)],
                   capture_output=True, check=True)  # fmt: skip


def reads_back(path: Path, offset: int, length: int, pattern: int) -> bool:
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern} {offset} {length}", str(path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def test_a_block_volume_is_a_private_qcow2(storage: Storage, tmp_path: Path) -> None:
    given = tmp_path / "fast"
    storage.create_pool("fast", path=str(given))
    made = storage.create_volume("fast", "data", size="2000000")  # not whole sectors: rounded up
    path = given / "block" / "data.qcow2"
    assert storage.path_of(made) == path
    assert made.size == 2000384 and made.format == "qcow2"
    details = info(path)
    assert details["format"] == "qcow2" and details["virtual-size"] == made.size
    assert "backing-filename" not in details
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(given / "block") == ["data.qcow2"]  # no temporary left
    view = storage.volume_view("fast", "data")
    assert view.usage is not None and 0 < view.usage < MiB  # sparse


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="needs qemu-io")
def test_grow_keeps_data_and_shrink_needs_force(storage: Storage) -> None:
    made = storage.create_volume("default", "data", size="64MiB")
    path = storage.path_of(made)
    write_at(path, 0, b"\x5a" * 65536)
    write_at(path, 60 * MiB, b"\x6b" * 65536)

    grown = storage.resize_volume("default", "data", "1GiB")
    assert grown.size == GiB and info(path)["virtual-size"] == GiB
    assert reads_back(path, 0, 65536, 0x5A) and reads_back(path, 60 * MiB, 65536, 0x6B)
    assert storage.resize_volume("default", "data", "1GiB") == storage.volume("default", "data")  # no-op

    with pytest.raises(SpecError, match="cuts off whatever lies past the new end"):
        storage.resize_volume("default", "data", "32MiB")
    assert info(path)["virtual-size"] == GiB and storage.volume("default", "data").size == GiB

    shrunk = storage.resize_volume("default", "data", "32MiB", force=True)
    assert shrunk.size == 32 * MiB and info(path)["virtual-size"] == 32 * MiB
    assert reads_back(path, 0, 65536, 0x5A)


def test_limits_are_stored_and_checked(storage: Storage) -> None:
    made = storage.create_volume("default", "data", size="1GiB", limits={"limits.read_iops": "500iops"})
    assert made.config == {"limits.read_iops": "500"}
    changed = storage.set_limits("default", "data", {"limits.write_bps": str(50 * MiB)})
    assert changed.config == {"limits.read_iops": "500", "limits.write_bps": str(50 * MiB)}
    with pytest.raises(SpecError, match="cannot be combined"):
        storage.set_limits("default", "data", {"limits.iops": "10"})
    assert storage.unset_limits("default", "data", ["limits.read_iops"]).config == {
        "limits.write_bps": str(50 * MiB)
    }
    with pytest.raises(SpecError, match="unknown volume setting"):
        storage.unset_limits("default", "data", ["limits.nope"])


def test_a_failed_create_leaves_no_file(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = storage.ensure_default()
    block = Path(pool.path, "block")

    def broken(path: Path) -> int:
        raise ToolError("qemu-img info gave no virtual size")

    monkeypatch.setattr(volumes, "virtual_size", broken)  # qemu-img create did run, then this failed
    with pytest.raises(ToolError):
        storage.create_volume("default", "data", size="1GiB")
    assert os.listdir(block) == [] and storage.volume_records() == []


def test_a_failed_record_removes_the_disk(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = storage.ensure_default()
    store: SqliteStore = storage.store  # type: ignore[assignment]
    real = store.create

    def refuse(record: VolumeRecord) -> VolumeRecord:
        if isinstance(record, VolumeRecord):
            raise ConflictError("made meanwhile")
        return real(record)

    monkeypatch.setattr(store, "create", refuse)
    with pytest.raises(ConflictError):
        storage.create_volume("default", "data", size="1GiB")
    assert os.listdir(Path(pool.path, "block")) == []


def test_leftovers_of_a_killed_create_are_swept(storage: Storage) -> None:
    pool = storage.ensure_default()
    block = Path(pool.path, "block")
    # a pid that cannot be alive: above the kernel's pid_max
    stale = block / ".data.qcow2.vktmp.99999999.0123abcd"
    stale.write_bytes(b"half a disk")
    live = block / f".other.qcow2.vktmp.{os.getpid()}.0123abcd"
    live.write_bytes(b"being made")
    storage.create_volume("default", "data", size="1GiB")
    assert sorted(os.listdir(block)) == [live.name, "data.qcow2"]


def test_a_file_in_the_way_is_never_overwritten(storage: Storage) -> None:
    pool = storage.ensure_default()
    orphan = Path(pool.path, "block", "data.qcow2")
    orphan.write_bytes(b"someone's data")
    with pytest.raises(ConflictError, match="no volume for it"):
        storage.create_volume("default", "data", size="1GiB")
    assert orphan.read_bytes() == b"someone's data"


def test_delete_removes_the_disk_and_a_missing_file_is_said(storage: Storage) -> None:
    made = storage.create_volume("default", "data", size="1GiB")
    path = storage.path_of(made)
    path.unlink()  # lost behind virtkit's back
    assert storage.volume_view("default", "data").usage is None
    with pytest.raises(ToolError):
        storage.resize_volume("default", "data", "2GiB")
    storage.delete_volume("default", "data")  # forgetting it still works
    made = storage.create_volume("default", "data", size="1GiB")
    storage.delete_volume("default", "data")
    assert not storage.path_of(made).exists() and os.listdir(path.parent) == []


def test_an_attached_volume_cannot_be_resized(storage: Storage) -> None:
    storage.create_volume("default", "data", size="1GiB")
    storage.claim("default", "data", "vm1")
    with pytest.raises(StateError, match="attached to vm1"):
        storage.resize_volume("default", "data", "2GiB")
