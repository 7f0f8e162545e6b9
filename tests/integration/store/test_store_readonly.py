"""State roots that cannot be written: a read-only mount, /proc. Each is refused with a StoreError
that says so, and nothing is created."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.errors import StoreError
from virtkit.store import open_store


def mount(*args: str | Path) -> None:
    subprocess.run(["mount", *map(str, args)], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A private tmpfs mounted read-write, always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    point = tmp_path / "mnt"
    point.mkdir()
    mount("-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", point)
    try:
        yield point
    finally:
        result = subprocess.run(["umount", str(point)], capture_output=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=True)


@pytest.mark.root
def test_a_read_only_mount_is_refused_and_left_empty(tmpfs: Path) -> None:
    mount("-o", "remount,ro", tmpfs)
    with pytest.raises(StoreError) as error:
        open_store(tmpfs)
    assert error.value.message == f"state root {tmpfs} is not writable: Read-only file system"

    with pytest.raises(StoreError) as error:
        open_store(tmpfs / "root")
    assert error.value.message == f"state root {tmpfs / 'root'} cannot be created: Read-only file system"
    assert os.listdir(tmpfs) == []


@pytest.mark.root
def test_an_existing_root_remounted_read_only_is_refused_and_untouched(tmpfs: Path) -> None:
    open_store(tmpfs).close()
    before = {p.name: p.stat().st_mtime_ns for p in tmpfs.iterdir()}
    assert set(before) == {"virtkit.db", "locks"}
    mount("-o", "remount,ro", tmpfs)
    with pytest.raises(StoreError, match="is not writable: Read-only file system"):
        open_store(tmpfs)
    assert {p.name: p.stat().st_mtime_ns for p in tmpfs.iterdir()} == before


@pytest.mark.parametrize(
    ("path", "why"), [("/proc/virtkit-test", "cannot be created"), ("/proc/1", "not writable")]
)
def test_a_root_in_proc_is_refused(path: str, why: str) -> None:
    with pytest.raises(StoreError, match=why):
        open_store(path)
    assert not os.path.exists("/proc/virtkit-test")
