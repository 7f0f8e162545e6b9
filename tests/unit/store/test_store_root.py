"""The state root policy: made only under an existing parent, never over a file, laid out as documented."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from virtkit.errors import StoreError
from virtkit.store import open_root, open_store
from virtkit.store.files import temp_name


def test_a_root_under_an_existing_parent_is_created_and_laid_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_store(root):
        pass
    assert root.stat().st_mode & 0o777 == 0o711
    assert (root / "virtkit.db").stat().st_mode & 0o777 == 0o600
    assert (root / "locks").is_dir()
    assert (root / "locks").stat().st_mode & 0o777 == 0o700


def test_a_missing_parent_fails_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "nonexistent" / "readonly"
    with pytest.raises(StoreError) as error:
        open_store(root)
    assert error.value.message == (
        f"state root {root} cannot be created: {tmp_path / 'nonexistent'} does not exist"
    )
    assert os.listdir(tmp_path) == []


def test_a_file_in_place_of_the_root_is_refused_and_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.write_text("precious")
    with pytest.raises(StoreError) as error:
        open_store(root)
    assert error.value.message == f"state root {root} is not a directory"
    assert root.read_text() == "precious"


def test_a_file_in_place_of_the_parent_is_refused(tmp_path: Path) -> None:
    (tmp_path / "parent").write_text("x")
    with pytest.raises(StoreError, match="parent is not a directory"):
        open_store(tmp_path / "parent" / "root")


def test_an_existing_root_is_used_as_it_is(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o750)
    os.chmod(root, 0o750)
    (root / "images").mkdir()
    with open_store(root):
        pass
    assert root.stat().st_mode & 0o777 == 0o750  # the administrator's choice stands
    assert sorted(os.listdir(root)) == ["images", "locks", "virtkit.db"]


def test_a_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_root("root").path == tmp_path / "root"


def test_opening_removes_temporaries_of_dead_writers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    child = subprocess.Popen(["true"])
    child.wait()
    stale = root / temp_name("runtime.json", pid=child.pid)
    stale.write_text("partial")
    open_root(root)
    assert not stale.exists()
