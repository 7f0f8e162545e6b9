"""openat2 with RESOLVE_IN_ROOT: whatever symlinks a tree holds, a lookup stays inside it."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.storage.openat2 import openat2


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A hostile root: links out of it, absolute and relative; and a secret beside it."""
    (tmp_path / "secret").write_text("host secret")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("inside")
    (root / "escape").symlink_to("/etc")  # absolute: /etc of the tree, not of the host
    (root / "up").symlink_to("../../../../../../../../etc")  # `..` stops at the tree's root
    (root / "secret").symlink_to(tmp_path / "secret")  # an absolute host path, missing inside
    (root / "loop").symlink_to("loop")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield root, fd
    os.close(fd)


def _read(fd: int, path: str) -> str:
    handle = openat2(fd, path, os.O_RDONLY)
    try:
        return os.read(handle, 100).decode()
    finally:
        os.close(handle)


def test_lookups_stay_in_the_root(tree: tuple[Path, int]) -> None:
    _root, fd = tree
    for path in ("/etc/hostname", "etc/hostname", "/escape/hostname", "/up/hostname", "/../../etc/hostname"):
        assert _read(fd, path) == "inside", path


def test_what_is_outside_is_not_found(tree: tuple[Path, int]) -> None:
    _root, fd = tree
    with pytest.raises(FileNotFoundError):
        openat2(fd, "/secret", os.O_RDONLY)  # its target, taken inside the tree, does not exist
    with pytest.raises(OSError) as caught:
        openat2(fd, "/loop", os.O_RDONLY)
    assert caught.value.errno == errno.ELOOP


def test_magic_links_are_refused() -> None:
    host = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as caught:
            openat2(host, "/proc/self/root/etc/hostname", os.O_RDONLY)
        assert caught.value.errno == errno.ELOOP
    finally:
        os.close(host)


def test_create_with_a_mode(tree: tuple[Path, int]) -> None:
    root, fd = tree
    made = openat2(fd, "/escape/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(made)
    assert (root / "etc" / "new").exists() and not Path("/etc/new").exists()
