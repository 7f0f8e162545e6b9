"""The pure-Python newc cpio writer and initramfs builder, checked by GNU cpio and a Python reader."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from virtkit.images.initramfs import CpioWriter, build_initramfs, compress

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="needs GNU cpio")


def read_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of every member up to the trailer, checking magic and alignment."""
    members, pos = [], 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        assert data[name_start + namesize - 1] == 0
        body = name_start + namesize + (-(110 + namesize) % 4)
        assert body % 4 == 0
        if name == "TRAILER!!!":
            return members
        members.append((name, mode, data[body : body + filesize]))
        pos = body + filesize + (-filesize % 4)


def _archive() -> bytes:
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.directory("bin")
    writer.file("bin/busybox", b"\x7fELF" + b"x" * 1001, 0o755)
    writer.symlink("bin/sh", "busybox")
    writer.parents("etc/init.d/rcS")
    writer.file("etc/init.d/rcS", b"#!/bin/sh\n", 0o755)
    writer.file("empty", b"")
    writer.finish()
    return out.getvalue()


def test_round_trip_through_python_reader() -> None:
    members = read_newc(_archive())
    names = [name for name, _, _ in members]
    assert names == ["bin", "bin/busybox", "bin/sh", "etc", "etc/init.d", "etc/init.d/rcS", "empty"]
    by_name = {name: (mode, data) for name, mode, data in members}
    assert stat.S_ISDIR(by_name["etc/init.d"][0])
    assert by_name["bin/busybox"] == (stat.S_IFREG | 0o755, b"\x7fELF" + b"x" * 1001)
    assert by_name["bin/sh"] == (stat.S_IFLNK | 0o777, b"busybox")
    assert by_name["empty"][1] == b""


@needs_cpio
def test_gnu_cpio_lists_and_extracts_it(tmp_path: Path) -> None:
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=_archive(), capture_output=True, check=True)
    assert listing.stdout.decode().split() == [
        "bin", "bin/busybox", "bin/sh", "etc", "etc/init.d", "etc/init.d/rcS", "empty",
    ]
    subprocess.run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], input=_archive(),
                   cwd=tmp_path, check=True)
    assert os.readlink(tmp_path / "bin" / "sh") == "busybox"
    assert (tmp_path / "bin" / "busybox").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "etc" / "init.d" / "rcS").read_bytes() == b"#!/bin/sh\n"


def test_archives_are_reproducible() -> None:
    assert _archive() == _archive()
    assert compress(_archive()) == compress(_archive())


def test_duplicates_and_late_members_are_refused() -> None:
    writer = CpioWriter(io.BytesIO())
    writer.file("a", b"1")
    with pytest.raises(ValueError, match="duplicate"):
        writer.file("/a/", b"2")
    writer.finish()
    with pytest.raises(ValueError, match="finished"):
        writer.file("b", b"")


def test_tree_keeps_links_modes_and_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "b" / "c").mkdir(parents=True)
    (root / "a").write_text("a")
    (root / "b" / "c" / "x").write_bytes(b"x")
    (root / "tmp").mkdir(mode=0o755)
    (root / "tmp").chmod(0o1777)
    (root / "link").symlink_to("/bin/busybox")
    out = io.BytesIO()
    writer = CpioWriter(out)
    writer.tree(root)
    writer.finish()
    members = read_newc(out.getvalue())
    assert [n for n, _, _ in members] == ["a", "b", "link", "tmp", "b/c", "b/c/x"]  # each level sorted
    modes = {n: m for n, m, _ in members}
    assert modes["tmp"] == stat.S_IFDIR | 0o1777
    assert dict((n, d) for n, _, d in members)["link"] == b"/bin/busybox"


def test_tree_refuses_device_nodes_and_fifos(tmp_path: Path) -> None:
    (tmp_path / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a file"):
        CpioWriter(io.BytesIO()).tree(tmp_path)


def test_initramfs_holds_tree_init_and_module_list(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "lib").mkdir()
    (rootfs / "bin" / "busybox").write_bytes(b"bb")
    out = tmp_path / "initrd.img"
    size = build_initramfs(out, rootfs=rootfs, init="#!/bin/sh\necho hi\n", release="6.1.0-9-amd64",
                           module_list="lib/modules/virtkit.load",
                           modules=[("virtio", b"V", ()), ("ext4", b"E", ("virtio:2", "pciclass:0106"))])
    assert size == out.stat().st_size
    members = {name: (mode, data) for name, mode, data in read_newc(gzip.decompress(out.read_bytes()))}
    assert members["init"] == (stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n")
    assert stat.S_ISDIR(members["newroot"][0]) and stat.S_ISDIR(members["lib/modules/6.1.0-9-amd64"][0])
    assert members["lib/modules/6.1.0-9-amd64/ext4.ko"][1] == b"E"
    assert members["lib/modules/virtkit.load"][1].decode().splitlines() == [
        "virtio /lib/modules/6.1.0-9-amd64/virtio.ko",
        "ext4 /lib/modules/6.1.0-9-amd64/ext4.ko virtio:2 pciclass:0106",
    ]


def test_initramfs_can_be_left_uncompressed(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    out = tmp_path / "initrd.img"
    build_initramfs(out, rootfs=tmp_path / "rootfs", init="", modules=[], release="r",
                    module_list="lib/modules/virtkit.load", gzip_level=None)
    assert out.read_bytes().startswith(b"070701")


def test_initramfs_carries_extra_binaries_with_their_directories(tmp_path: Path) -> None:
    (tmp_path / "rootfs" / "sbin").mkdir(parents=True)
    out = tmp_path / "initrd.img"
    build_initramfs(out, rootfs=tmp_path / "rootfs", init="", modules=[], release="r",
                    module_list="lib/modules/virtkit.load",
                    extra=[("sbin/resize2fs", b"R", 0o755), ("lib/x86_64-linux-gnu/libc.so.6", b"C", 0o755),
                           ("lib64/ld-linux-x86-64.so.2", b"L", 0o755)])
    members = {name: (mode, data) for name, mode, data in read_newc(gzip.decompress(out.read_bytes()))}
    assert members["sbin/resize2fs"] == (stat.S_IFREG | 0o755, b"R")
    assert members["lib/x86_64-linux-gnu/libc.so.6"][1] == b"C"
    assert stat.S_ISDIR(members["lib/x86_64-linux-gnu"][0]) and stat.S_ISDIR(members["lib64"][0])
    with pytest.raises(ValueError, match="duplicate"):  # an extra file never shadows one of the tree
        build_initramfs(out, rootfs=tmp_path / "rootfs", init="", modules=[], release="r",
                        module_list="lib/modules/virtkit.load", extra=[("sbin", b"", 0o755)])
