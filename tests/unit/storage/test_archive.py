"""Safe extraction: every hostile case is refused (or defused) and leaves nothing behind."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.unit.storage.tarbuild import (
    compress,
    directory,
    hardlink,
    reg,
    special,
    symlink,
    tar_bytes,
    write,
)
from virtkit.errors import NotFoundError, RejectedError, ToolError
from virtkit.storage import Limits, extract
from virtkit.units import MiB

SAMPLE = [
    directory("./"),
    directory("./etc"),
    reg("./etc/hostname", b"box\n"),
    reg("./etc/shadow", b"root:*:\n", mode=0o640, uid=0, gid=42),
    directory("./home/user", mode=0o750, uid=1000),
    reg("./home/user/notes", b"x" * 3000, uid=1000, gid=1000),
    symlink("./bin", "usr/bin"),
    directory("./usr/bin"),
    reg("./usr/bin/busybox", b"\x7fELF", mode=0o755),
    symlink("./usr/bin/sh", "/bin/busybox"),
    hardlink("./usr/bin/ash", "./usr/bin/busybox"),
]


def refused(source: Path, dest: Path, match: str, **kwargs: object) -> None:
    """Extraction of `source` is refused with a message matching `match`, and `dest` is gone."""
    with pytest.raises(RejectedError, match=match):
        extract(source, dest, **kwargs)  # type: ignore[arg-type]
    assert not dest.exists() and not dest.is_symlink()


@pytest.mark.parametrize("kind", ["none", "gzip", "xz", "bzip2", "zstd"])
def test_every_compression_extracts_the_same_tree(tmp_path: Path, kind: str) -> None:
    source = write(tmp_path / "rootfs.tar", SAMPLE, kind)
    dest = tmp_path / "out"
    stats = extract(source, dest, owners=True)
    assert (stats.files, stats.dirs, stats.symlinks, stats.hardlinks) == (4, 3, 2, 1)
    assert stats.bytes == 4 + 8 + 3000 + 4
    assert (dest / "etc/hostname").read_bytes() == b"box\n"
    assert os.readlink(dest / "usr/bin/sh") == "/bin/busybox"
    assert os.readlink(dest / "bin") == "usr/bin"
    assert os.stat(dest / "usr/bin/ash").st_ino == os.stat(dest / "usr/bin/busybox").st_ino
    shadow = os.stat(dest / "etc/shadow")
    assert (stat.S_IMODE(shadow.st_mode), shadow.st_gid) == (0o640, 42)
    home = os.stat(dest / "home/user")
    assert (stat.S_IMODE(home.st_mode), home.st_uid) == (0o750, 1000)
    assert os.stat(dest / "home/user/notes").st_mtime == 1_600_000_000
    assert stat.S_IMODE(os.stat(dest / "home").st_mode) == 0o755  # implied parent


def test_owners_are_kept_only_when_asked(tmp_path: Path) -> None:
    source = write(tmp_path / "a.tar", [reg("f", b"1", uid=1234, gid=4321)])
    extract(source, tmp_path / "plain")
    assert os.stat(tmp_path / "plain/f").st_uid == os.geteuid()
    if os.geteuid() == 0:
        extract(source, tmp_path / "owned", owners=True)
        assert os.stat(tmp_path / "owned/f")[stat.ST_UID : stat.ST_GID + 1] == (1234, 4321)


def test_absolute_member_is_refused(tmp_path: Path) -> None:
    source = write(tmp_path / "evil.tar", [reg("ok", b"1"), reg("/etc/evil", b"x")])
    refused(
        source,
        tmp_path / "out",
        r"archive evil.tar is refused: member '/etc/evil' has a path that is absolute",
    )


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./a/.."])
def test_dotdot_member_is_refused(tmp_path: Path, name: str) -> None:
    source = write(tmp_path / "evil.tar", [reg(name, b"x")])
    refused(source, tmp_path / "out", "climbs out of the destination with '..'")
    assert not (tmp_path / "evil").exists()


def test_write_through_an_earlier_symlink_is_refused(tmp_path: Path) -> None:
    host_etc = tmp_path / "host-etc"
    host_etc.mkdir()
    source = write(tmp_path / "evil.tar", [symlink("etc", str(host_etc)), reg("etc/passwd", b"pwned")])
    refused(source, tmp_path / "out", r"member 'etc/passwd' would be written through 'etc', a symlink")
    assert list(host_etc.iterdir()) == []


def test_write_through_a_relative_symlink_is_refused(tmp_path: Path) -> None:
    entries = [directory("a"), symlink("a/up", "../../.."), reg("a/up/escaped", b"x")]
    refused(write(tmp_path / "evil.tar", entries), tmp_path / "out", "would be written through 'a/up'")
    assert not (tmp_path.parent / "escaped").exists()


def test_directory_replaced_by_symlink_gets_no_metadata_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    entries = [directory("d", mode=0o777, uid=99), symlink("d", str(outside))]
    extract(write(tmp_path / "a.tar", entries), tmp_path / "out", owners=True)
    assert os.readlink(tmp_path / "out/d") == str(outside)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755 and outside.stat().st_uid == os.geteuid()


def test_symlink_owner_is_set_on_the_link_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("mine")
    extract(write(tmp_path / "a.tar", [symlink("l", str(target), uid=4242)]), tmp_path / "out", owners=True)
    assert target.stat().st_uid == os.geteuid()
    if os.geteuid() == 0:
        assert os.lstat(tmp_path / "out/l").st_uid == 4242


def test_a_later_file_replaces_a_hardlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    entries = [reg("etc/passwd", b"root"), hardlink("x", "etc/passwd"), reg("x", b"pwned")]
    extract(write(tmp_path / "a.tar", entries), tmp_path / "out")
    assert (tmp_path / "out/etc/passwd").read_bytes() == b"root"
    assert (tmp_path / "out/x").read_bytes() == b"pwned"


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("/etc/shadow", "is a hard link to '/etc/shadow', which is absolute"),
        ("../../etc/shadow", "climbs out of the destination"),
        ("etc/shadow", "which is not a file extracted before it"),
        ("lnk/shadow", "which is not a file extracted before it"),
        ("d", "is a hard link to the directory 'd'"),
        ("./", "is a hard link to the destination directory itself"),
    ],
)
def test_hardlink_outside_or_to_nothing_is_refused(tmp_path: Path, target: str, match: str) -> None:
    entries = [symlink("lnk", "/etc"), directory("d"), hardlink("x", target)]
    refused(write(tmp_path / "evil.tar", entries), tmp_path / "out", match)


def test_hardlink_to_a_symlink_links_the_symlink_itself(tmp_path: Path) -> None:
    entries = [symlink("s", "/etc/shadow"), hardlink("h", "s")]
    extract(write(tmp_path / "a.tar", entries), tmp_path / "out")
    assert os.readlink(tmp_path / "out/h") == "/etc/shadow"


def test_devices_and_fifos_are_skipped_and_counted(tmp_path: Path) -> None:
    entries = [
        special("dev/null", tarfile.CHRTYPE),
        special("dev/sda", tarfile.BLKTYPE),
        special("run/fifo", tarfile.FIFOTYPE),
        hardlink("dev/null2", "dev/null"),
        reg("ok", b"1"),
    ]
    source = write(tmp_path / "a.tar", entries)
    stats = extract(source, tmp_path / "out")
    assert stats.skipped_devices == 4 and stats.files == 1
    assert sorted(p.name for p in (tmp_path / "out/dev").iterdir()) == []
    refused(source, tmp_path / "strict", "member 'dev/null' is a device node or FIFO", strict=True)


def test_setuid_and_setgid_are_stripped_sticky_kept(tmp_path: Path) -> None:
    entries = [
        reg("su", b"x", mode=0o4755),
        reg("wall", b"x", mode=0o2755),
        directory("mail", mode=0o2775),
        directory("tmp", mode=0o1777),
    ]
    stats = extract(write(tmp_path / "a.tar", entries), tmp_path / "out")
    modes = {
        name: stat.S_IMODE(os.lstat(tmp_path / "out" / name).st_mode)
        for name in ("su", "wall", "mail", "tmp")
    }
    assert modes == {"su": 0o755, "wall": 0o755, "mail": 0o2775, "tmp": 0o1777}
    assert stats.stripped_setuid == 2


def test_total_size_limit(tmp_path: Path) -> None:
    source = write(tmp_path / "big.tar", [reg("a", b"x" * (MiB // 2)), reg("b", b"y" * (MiB // 2 + 1))])
    refused(source, tmp_path / "out", r"member 'b' takes the files past 1MiB", limits=Limits(max_bytes=MiB))
    refused(source, tmp_path / "out", "it expands to more than 512KiB", limits=Limits(max_bytes=MiB // 2))


def test_compression_ratio_guard(tmp_path: Path) -> None:
    source = write(tmp_path / "bomb.tar.gz", [reg("zeros", bytes(8 * MiB))], "gzip")
    limits = Limits(max_ratio=50, ratio_floor=2 * MiB)
    refused(source, tmp_path / "out", "expands more than 50 times.*decompression bomb", limits=limits)


def test_member_count_limit(tmp_path: Path) -> None:
    source = write(tmp_path / "many.tar", [reg(f"f{i}") for i in range(11)])
    refused(source, tmp_path / "out", "it has more than 10 members", limits=Limits(max_members=10))
    assert extract(source, tmp_path / "ok", limits=Limits(max_members=11)).files == 11


def test_path_length_limits(tmp_path: Path) -> None:
    deep = write(tmp_path / "deep.tar", [reg("a/" * 60 + "f")])
    refused(deep, tmp_path / "out", "has a path that is longer than 100 bytes", limits=Limits(max_path=100))
    wide = write(tmp_path / "wide.tar", [reg("n" * 256)])
    refused(wide, tmp_path / "out", "has a component longer than 255 bytes")


def test_oversized_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    info, data = reg("x" * (2 * MiB))
    (tmp_path / "long.tar").write_bytes(tar_bytes([(info, data)], fmt=tarfile.GNU_FORMAT))
    refused(tmp_path / "long.tar", tmp_path / "out", "member header is larger than 1MiB")


def test_truncated_tar_gz(tmp_path: Path) -> None:
    whole = compress(tar_bytes([reg("a", os.urandom(64 * 1024))]), "gzip")
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    refused(tmp_path / "cut.tar.gz", tmp_path / "out", r"archive cut.tar.gz is truncated or corrupt")


def test_corrupt_tar_xz(tmp_path: Path) -> None:
    data = bytearray(compress(tar_bytes([reg("a", os.urandom(64 * 1024))]), "xz"))
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)
    (tmp_path / "bad.tar.xz").write_bytes(bytes(data))
    refused(tmp_path / "bad.tar.xz", tmp_path / "out", r"archive bad.tar.xz is truncated or corrupt")


@pytest.mark.parametrize("cut", ["boundary", "data", "header"])
def test_truncated_plain_tar(tmp_path: Path, cut: str) -> None:
    whole = tar_bytes([reg("a", b"1" * 1000), reg("b", b"2" * 1000)], fmt=tarfile.USTAR_FORMAT)
    ends = {"boundary": 512 + 1024 + 512 + 1024, "data": 512 + 1024 + 512 + 300, "header": 512 + 1024 + 100}
    (tmp_path / "cut.tar").write_bytes(whole[: ends[cut]])
    refused(tmp_path / "cut.tar", tmp_path / "out", "truncated or corrupt")


def test_data_after_the_end_of_the_archive_is_refused(tmp_path: Path) -> None:
    whole = tar_bytes([reg("a", b"1")]) + tar_bytes([reg("smuggled", b"2")])
    (tmp_path / "two.tar").write_bytes(whole)
    refused(tmp_path / "two.tar", tmp_path / "out", "after member 'a' comes what is neither")


def test_corrupt_zstd_names_zstd(tmp_path: Path) -> None:
    data = compress(tar_bytes([reg("a", os.urandom(200 * 1024))]), "zstd")
    (tmp_path / "bad.tar.zst").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "bad.tar.zst", tmp_path / "out", r"truncated or corrupt.*zstd")


def test_missing_zstd_is_a_tool_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write(tmp_path / "a.tar.zst", [reg("a")], "zstd")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolError, match="zstd"):
        extract(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_name_says_gzip_but_content_is_plain_tar(tmp_path: Path) -> None:
    source = write(tmp_path / "liar.tar.gz", [reg("a", b"1")])
    assert extract(source, tmp_path / "out").files == 1


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not a tar archive\n" * 40, os.urandom(4096), compress(b"text" * 300, "gzip")],
    ids=["empty", "text", "random", "gzip-text"],
)
def test_not_an_archive_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "fake.tar").write_bytes(content)
    refused(tmp_path / "fake.tar", tmp_path / "out", r"fake.tar is not a tar archive")


def test_missing_source_and_non_files(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        extract(tmp_path / "nope.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    os.mkfifo(tmp_path / "fifo.tar")
    refused(tmp_path / "fifo.tar", tmp_path / "out", "is not a regular file")


def test_progress_reports_compressed_bytes(tmp_path: Path) -> None:
    source = write(tmp_path / "a.tar.gz", [reg("a", os.urandom(3 * MiB))], "gzip")
    seen: list[tuple[int, int]] = []
    extract(source, tmp_path / "out", progress=lambda done, total: seen.append((done, total)))
    assert seen and all(total == source.stat().st_size and done <= total for done, total in seen)


def test_layer_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    lower = [
        reg("a/file", b"1"),
        reg("a/keep", b"2"),
        reg("b/old", b"3"),
        reg("b/sub/deep", b"4"),
        reg("c", b"5"),
    ]
    extract(write(tmp_path / "l1.tar", lower), dest, layer=True)
    upper = [
        reg("a/.wh.file"),
        reg("b/sub/new", b"6"),  # before the opaque marker: this layer's own, kept
        reg("b/.wh..wh..opq"),
        reg("b/new", b"7"),
        reg(".wh.c"),
        reg("d/x", b"8"),
        reg("d/.wh.x"),  # same-layer entry: not hidden
        reg(".wh.nothing"),
    ]
    stats = extract(write(tmp_path / "l2.tar", upper), dest, layer=True)
    tree = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert tree == ["a", "a/keep", "b", "b/new", "b/sub", "b/sub/new", "d", "d/x"]
    assert stats.whiteouts == 5


def test_whiteouts_are_plain_files_outside_layers(tmp_path: Path) -> None:
    extract(write(tmp_path / "a.tar", [reg(".wh.x", b"1")]), tmp_path / "out")
    assert (tmp_path / "out/.wh.x").read_bytes() == b"1"


def test_whiteout_never_deletes_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    dest = tmp_path / "rootfs"
    extract(write(tmp_path / "l1.tar", [symlink("v", str(victim))]), dest, layer=True)
    extract(write(tmp_path / "l2.tar", [reg("v/.wh.precious")]), dest, layer=True)
    refused(
        write(tmp_path / "l3.tar", [reg("v/.wh..wh..opq")]), dest, "would be written through 'v'", layer=True
    )
    assert (victim / "precious").read_text() == "keep"


@pytest.mark.parametrize("name", ["a/.wh...", "a/.wh..", ".wh."])
def test_whiteout_of_dot_or_dotdot_is_refused(tmp_path: Path, name: str) -> None:
    dest = tmp_path / "rootfs"
    extract(write(tmp_path / "l1.tar", [reg("a/x", b"1"), reg("keep", b"2")]), dest, layer=True)
    refused(write(tmp_path / "l2.tar", [reg(name)]), dest, "is a whiteout of nothing", layer=True)


def test_opaque_root_hides_every_lower_entry(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    extract(write(tmp_path / "l1.tar", [reg("a/x", b"1"), reg("b", b"2")]), dest, layer=True)
    extract(
        write(tmp_path / "l2.tar", [reg(".wh..wh..opq"), reg("c", b"3"), reg(".wh..wh.plnk")]),
        dest,
        layer=True,
    )
    assert sorted(os.listdir(dest)) == ["c"]
