"""Which directories may hold a pool: form first (absolute, plain), then the filesystem (no symlink on
the way, empty or new, not a file), then the neighbours (state root, other pools, other virtkits)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.errors import SpecError
from virtkit.storage import pools


@pytest.mark.parametrize(
    ("text", "normal"),
    [("/srv/virtkit", "/srv/virtkit"), ("/srv//virtkit/", "/srv/virtkit"), ("//srv", "/srv")],
)
def test_normal_paths(text: str, normal: str) -> None:
    assert pools.normal_path(text) == normal


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("pools/fast", "must be absolute"),
        ("./fast", "must be absolute"),
        ("~/fast", "must be absolute"),
        ("/srv/../etc", "'.' or '..'"),
        ("/srv/./fast", "'.' or '..'"),
        ("/", "whole filesystem"),
        ("///", "whole filesystem"),
        ("/srv/fa\nst", "control characters"),
        ("/srv/\x00", "control characters"),
        ("/" + "a" * 2000, "longer than"),
    ],
)
def test_malformed_paths_are_refused(text: str, words: str) -> None:
    with pytest.raises(SpecError, match=words):
        pools.normal_path(text)


def test_within() -> None:
    assert pools.within("/a/b", "/a") and pools.within("/a", "/a") and pools.within("/a/b", "/")
    assert not pools.within("/ab", "/a") and not pools.within("/a", "/a/b")


@pytest.fixture
def root(tmp_path: Path) -> str:
    made = tmp_path / "root"
    (made / "pools").mkdir(parents=True)
    (made / "virtkit.db").write_text("")
    (made / "instances").mkdir()
    return str(made)


def check(path: Path | str, root: str, others: dict[str, str] | None = None) -> bool:
    return pools.check_path(str(path), root=root, others=others or {})


def test_new_and_empty_directories_are_taken(tmp_path: Path, root: str) -> None:
    assert check(tmp_path / "new", root) is False  # to be made
    (tmp_path / "empty" / "lost+found").mkdir(parents=True)  # a fresh filesystem's mount point
    assert check(tmp_path / "empty", root) is True
    assert check(Path(root, "pools", "fast"), root) is False


@pytest.mark.parametrize(
    ("make", "words"),
    [
        ("file", "not a directory"),
        ("full", "not empty"),
        ("link", "goes through a symlink"),
        ("through-link", "goes through a symlink"),
        ("no-parent", "does not exist"),
        ("parent-file", "is not a directory"),
        ("marked", "already the directory of a virtkit pool"),
        ("in-marked", "inside another virtkit pool"),
        ("other-root", "inside another virtkit state root"),
    ],
)
def test_unusable_directories_are_refused(tmp_path: Path, root: str, make: str, words: str) -> None:
    target = tmp_path / make
    if make == "file":
        target.write_text("x")
    elif make == "full":
        (target / "data").mkdir(parents=True)
    elif make == "link":
        target.symlink_to("/etc")
    elif make == "through-link":
        (tmp_path / "hop").symlink_to(tmp_path)
        target = tmp_path / "hop" / "sub"
    elif make == "no-parent":
        target = target / "sub"
    elif make == "parent-file":
        target.write_text("x")
        target = target / "sub"
    elif make == "marked":
        target.mkdir()
        (target / pools.MARKER).write_text("{}")
    elif make == "in-marked":
        target.mkdir()
        (target / pools.MARKER).write_text("{}")
        target = target / "sub"
    elif make == "other-root":
        target.mkdir()
        (target / "virtkit.db").write_text("")
        target = target / "pool"
    with pytest.raises(SpecError, match=words):
        check(target, root)


@pytest.mark.parametrize("where", ["/proc/virtkit", "/sys/fs/x", "/dev/shm/pool"])
def test_pseudo_filesystems_are_refused(root: str, where: str) -> None:
    with pytest.raises(SpecError, match="pseudo-filesystem"):
        check(where, root)


def test_the_state_root_is_kept_apart(root: str) -> None:
    for path, words in [
        (root, "would hold the state root"),
        (os.path.dirname(root), "would hold the state root"),
        (os.path.join(root, "instances"), "own directories"),
        (os.path.join(root, "images", "x"), "own directories"),
        (os.path.join(root, "pools"), "own directories"),
        (os.path.join(root, "elsewhere"), "own directories"),
    ]:
        with pytest.raises(SpecError, match=words):
            check(path, root)


def test_pools_do_not_nest(tmp_path: Path, root: str) -> None:
    area = tmp_path / "area"
    (area / "fast").mkdir(parents=True)
    others = {"fast": str(area / "fast")}
    for path, words in [
        (area / "fast", "inside pool 'fast'"),
        (area / "fast" / "sub", "inside pool 'fast'"),
        (area, "would hold pool 'fast'"),
    ]:
        with pytest.raises(SpecError, match=words):
            check(path, root, others)
    assert check(area / "fast2", root, others) is False  # a shared prefix is not nesting
