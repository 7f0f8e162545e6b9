"""Importing root filesystem tarballs: tree, os-release, architecture, sanity checks."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from tests.unit.storage.tarbuild import directory, reg, special, symlink, write
from virtkit.errors import NotFoundError, RejectedError
from virtkit.images.rootfs import import_rootfs
from virtkit.images.rootinfo import host_arch
from virtkit.images.staged import ROOTFS

AARCH64_ELF = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\xb7\x00" + bytes(44)
OS_RELEASE = b'PRETTY_NAME="Tiny 1"\nNAME="Tiny \\"Linux\\""\nVERSION_ID=1\nVERSION="1 (first)"\nID=tiny\n'

ROOTFS_ENTRIES = [
    directory("./"),
    directory("./etc"),
    symlink("./etc/os-release", "../usr/lib/os-release"),
    reg("./usr/lib/os-release", OS_RELEASE),
    reg("./bin/busybox", AARCH64_ELF, mode=0o755),
    symlink("./bin/sh", "/bin/busybox"),
    symlink("./sbin/init", "/bin/busybox"),
    reg("./bin/su", b"x", mode=0o4755),
    special("./dev/console", tarfile.CHRTYPE),
]


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "staging"
    path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_rootfs_tarball(tmp_path: Path, staging: Path, kind: str) -> None:
    source = write(tmp_path / "tiny.tar.x", ROOTFS_ENTRIES, kind)
    progress: list[tuple[str, float | None]] = []
    staged = import_rootfs(source, staging, name="tiny", progress=lambda w, f: progress.append((w, f)))
    assert (staged.kinds, staged.format, staged.arch) == (["container"], "rootfs-tar", "aarch64")
    assert staged.files == {ROOTFS: "rootfs"} and staged.container == {}
    assert staged.properties == {
        "os.name": 'Tiny "Linux"',
        "os.version": "1 (first)",
        "os.id": "tiny",
        "skipped_devices": "1",
        "stripped_setuid": "1",
    }
    assert os.readlink(staging / "rootfs/bin/sh") == "/bin/busybox"
    assert progress[-1] == ("unpacking tiny.tar.x", 1.0)


def test_os_release_symlink_never_leaves_the_rootfs(tmp_path: Path, staging: Path) -> None:
    entries = [symlink("etc/os-release", "/../../../../etc/os-release"), reg("bin/sh", b"#!")]
    staged = import_rootfs(write(tmp_path / "r.tar", entries), staging, name="r")
    assert "os.name" not in staged.properties  # the host's /etc/os-release was not read
    assert staged.arch == host_arch()


def test_no_init_nor_shell_is_a_warning(tmp_path: Path, staging: Path) -> None:
    staged = import_rootfs(write(tmp_path / "r.tar", [reg("data/file", b"1")]), staging, name="r")
    assert "no /sbin/init nor /bin/sh" in staged.properties["warning"]


def test_tarball_without_files_is_refused(tmp_path: Path, staging: Path) -> None:
    source = write(
        tmp_path / "empty.tar.gz", [directory("./"), directory("./etc"), symlink("bin", "x")], "gzip"
    )
    with pytest.raises(RejectedError, match=r"archive empty\.tar\.gz holds no files"):
        import_rootfs(source, staging, name="r")
    assert os.listdir(staging) == []


def test_hostile_rootfs_leaves_nothing(tmp_path: Path, staging: Path) -> None:
    source = write(
        tmp_path / "evil.tar", [reg("./ok", b"1"), symlink("./etc", "/etc"), reg("./etc/passwd", b"x")]
    )
    with pytest.raises(RejectedError, match=r"member '\./etc/passwd' would be written through 'etc'"):
        import_rootfs(source, staging, name="r")
    assert os.listdir(staging) == []


def test_missing_source_and_directory(tmp_path: Path, staging: Path) -> None:
    with pytest.raises(NotFoundError):
        import_rootfs(tmp_path / "nope.tar", staging, name="r")
    with pytest.raises(RejectedError, match="is a directory"):
        import_rootfs(tmp_path, staging, name="r")
