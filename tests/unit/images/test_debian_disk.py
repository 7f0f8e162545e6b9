"""Packing a Debian tree as a VM image: sizes and kernel discovery (the tools run in integration)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.errors import RejectedError
from virtkit.images.debiandisk import disk_size, find_kernel, tree_size
from virtkit.units import MiB


def test_disk_size_leaves_room_and_is_whole_mebibytes() -> None:
    assert disk_size(0) == 256 * MiB
    size = disk_size(700 * MiB + 1)
    assert size % MiB == 0
    assert size >= 700 * MiB * 1.3 + 256 * MiB


def test_tree_size_counts_hard_links_once_and_does_not_follow_links(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "c").symlink_to("/usr")
    single = tree_size(tmp_path)
    assert 100_000 <= single < 200_000


def _boot(tree: Path, *names: str) -> None:
    (tree / "boot").mkdir(parents=True, exist_ok=True)
    for name in names:
        (tree / "boot" / name).write_text("")


def test_find_kernel_takes_the_newest_with_an_initrd(tmp_path: Path) -> None:
    _boot(tmp_path, "vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64",
          "vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64", "vmlinuz-6.1.0-11-amd64")
    assert find_kernel(tmp_path) == "6.1.0-10-amd64"


def test_find_kernel_without_one(tmp_path: Path) -> None:
    _boot(tmp_path, "config-6.1.0-9-amd64")
    with pytest.raises(RejectedError, match="no kernel"):
        find_kernel(tmp_path)
