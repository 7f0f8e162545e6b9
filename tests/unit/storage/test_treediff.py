"""The file-level difference of two container layers (storage/treediff.py), on tmp dirs: what `diff`
carries and lists, and that `apply` on a copy of the base, fed through a tar stream and the safe
extractor as an import feeds it, gives back the present exactly (types, sizes, modes, owners,
times, xattrs incl. overlay whiteouts and opaque markers, symlink targets, hard-link groups)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from virtkit.errors import RejectedError
from virtkit.storage import treediff
from virtkit.storage.backuptree import OPAQUE, UPPER_XATTRS
from virtkit.storage.members import Members
from virtkit.storage.snapshots import copy
from virtkit.storage.tarstream import Limits

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted.* xattrs need root")


def _listing(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything of every entry under `top` that a layer keeps; hard links as groups of names."""
    found: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for directory, dirs, files in os.walk(top):
        for name in [".", *dirs, *files] if directory == str(top) else [*dirs, *files]:
            path = os.path.join(directory, name) if name != "." else directory
            relative = os.path.relpath(path, top)
            info = os.lstat(path)
            inodes.setdefault(info.st_ino, []).append(relative)
            content = ""
            if stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
            xattrs = {}
            if not stat.S_ISLNK(info.st_mode):
                names = os.listxattr(path, follow_symlinks=False)
                xattrs = {n: os.getxattr(path, n, follow_symlinks=False)
                          for n in names if n in UPPER_XATTRS or n.startswith("user.")}  # fmt: skip
            kind, mode = stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode)
            found[relative] = (kind, mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns,
                               info.st_rdev, link, sorted(xattrs.items()), content, info.st_ino)  # fmt: skip
    groups = {ino: tuple(sorted(names)) for ino, names in inodes.items() if len(names) > 1}
    return {name: (*value[:-1], groups.get(value[-1], ())) for name, value in found.items()}


def _through_tar(changes: treediff.Diff, staged: Path) -> None:
    """The carried entries written as a tar stream and extracted as an import extracts them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in changes.entries:
            if entry.path is not None:
                with open(entry.path, "rb") as data:
                    tar.addfile(entry.info, data)
            else:
                tar.addfile(entry.info)
    buffer.seek(0)
    staged.mkdir()
    members = Members(staged, "test", Limits(), layer=False, owners=True, strict=True, exact=True,
                      xattrs=UPPER_XATTRS)  # fmt: skip
    with tarfile.open(fileobj=buffer, mode="r|") as tar:
        for member in tar:
            members.add(tar, member)
    members.finish()
    members.close()


def _round_trip(tmp_path: Path, base: Path, present: Path) -> treediff.Diff:
    lower = tmp_path / "lower"  # the image under the layer: a layer is walked with whiteouts then
    lower.mkdir()
    changes = treediff.diff(base, present, lower=lower)
    staged, target = tmp_path / "staged", tmp_path / "target"
    _through_tar(changes, staged)
    copy(base, target, what="copying the base")
    deleted = treediff.parse_deleted(treediff.encode_deleted(changes.deleted), "test")
    treediff.apply(target, staged, deleted, label="test", snapshot="base")
    assert_same(_listing(target), _listing(present))
    return changes


def assert_same(got: dict[str, tuple[object, ...]], wanted: dict[str, tuple[object, ...]]) -> None:
    """Equal listings, times within a microsecond (an archive carries them as floats)."""
    assert {k: v[:5] + v[6:] for k, v in got.items()} == {k: v[:5] + v[6:] for k, v in wanted.items()}
    for name, value in got.items():
        assert abs(int(str(value[5])) - int(str(wanted[name][5]))) < 1000, name


def _write(path: Path, data: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    os.chmod(path, mode)
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    top = tmp_path / "base"
    _write(top / "etc/conf", "one\n")
    _write(top / "etc/keep", "kept\n")
    _write(top / "etc/mode", "mode\n", 0o600)
    _write(top / "srv/a", "linked\n")
    os.link(top / "srv/a", top / "srv/b")
    _write(top / "srv/pair1", "pair\n")
    os.link(top / "srv/pair1", top / "srv/pair2")
    _write(top / "gone/deep/file", "gone\n")
    _write(top / "becomes-dir", "file\n")
    _write(top / "dir-becomes-file/child", "child\n")
    _write(top / "var/lib/unchanged", "same\n")
    os.symlink("../etc/conf", top / "srv/conf-link")
    os.mknod(top / "etc/was-hidden", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # a whiteout
    os.chown(top / "srv", 1000, 1000)
    return top


@pytest.fixture
def present(tmp_path: Path, base: Path) -> Path:
    top = tmp_path / "present"
    copy(base, top, what="copying the base")
    return top


def test_nothing_changed_carries_the_root_only(tmp_path: Path, base: Path, present: Path) -> None:
    changes = _round_trip(tmp_path, base, present)
    assert [e.info.name for e in changes.entries] == ["."] and changes.deleted == [] and changes.changed == 0


def test_every_kind_of_change_comes_back_exactly(tmp_path: Path, base: Path, present: Path) -> None:
    _write(present / "etc/conf", "two, longer\n")  # modified
    os.unlink(present / "etc/keep")  # a file deleted...
    os.mknod(present / "etc/keep", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # ...hiding the image's
    os.chmod(present / "etc/mode", 0o4755)  # mode only
    _write(present / "root/new", "new\n")  # new in a new directory
    os.symlink("/etc/conf", present / "root/abs-link")
    os.symlink("dangling/nowhere", present / "srv/dangling")
    import shutil

    shutil.rmtree(present / "gone")  # a tree deleted
    os.unlink(present / "becomes-dir")
    _write(present / "becomes-dir/inside", "inside\n")  # a file replaced by a directory
    shutil.rmtree(present / "dir-becomes-file")
    _write(present / "dir-becomes-file", "now a file\n")  # a directory replaced by a file
    os.unlink(present / "etc/was-hidden")  # a whiteout replaced by a file
    _write(present / "etc/was-hidden", "back\n")
    os.setxattr(present / "var", "trusted.overlay.opaque", b"y")  # made opaque
    os.setxattr(present / "srv/a", "user.note", b"x")  # an xattr on a linked inode
    os.mkfifo(present / "srv/fifo")
    os.chown(present / "var/lib/unchanged", 5, 6)
    changes = _round_trip(tmp_path, base, present)
    carried = {e.info.name for e in changes.entries}
    assert {"srv/a", "srv/b"} <= carried  # both names of the changed inode
    assert "srv/pair1" not in carried and "etc/was-hidden" in carried and "etc/keep" in carried
    assert changes.deleted == ["gone", "dir-becomes-file/child"]
    assert os.getxattr(present / "var", OPAQUE) == b"y"


def test_hard_links_made_and_broken(tmp_path: Path, base: Path, present: Path) -> None:
    os.link(present / "etc/keep", present / "srv/keep-link")  # a new link to an unchanged file
    os.unlink(present / "srv/pair2")  # a link broken: pair2 becomes a file of its own
    _write(present / "srv/pair2", "pair\n")
    before = (present / "srv/pair1").stat().st_mtime_ns
    changes = _round_trip(tmp_path, base, present)
    carried = {e.info.name for e in changes.entries}
    assert {"etc/keep", "srv/keep-link", "srv/pair1", "srv/pair2"} <= carried
    assert (present / "srv/pair1").stat().st_mtime_ns == before
    target = tmp_path / "target"
    assert (target / "etc/keep").stat().st_ino == (target / "srv/keep-link").stat().st_ino
    assert (target / "srv/pair1").stat().st_ino != (target / "srv/pair2").stat().st_ino


def test_a_content_change_in_place_of_a_linked_file(tmp_path: Path, base: Path, present: Path) -> None:
    with open(present / "srv/b", "a") as out:
        out.write("more\n")
    _round_trip(tmp_path, base, present)
    target = tmp_path / "target"
    assert (target / "srv/a").read_text() == "linked\nmore\n"
    assert (target / "srv/a").stat().st_ino == (target / "srv/b").stat().st_ino


def test_directory_times_are_the_presents_even_untouched_ones(tmp_path: Path, base: Path,
                                                             present: Path) -> None:  # fmt: skip
    _write(present / "var/lib/unchanged", "changed\n")
    os.utime(present / "var/lib", ns=(1, 1_500_000_000_000_000_000))
    _round_trip(tmp_path, base, present)
    assert abs((tmp_path / "target/var/lib").stat().st_mtime_ns - 1_500_000_000_000_000_000) < 1000


@pytest.mark.parametrize(("listed", "why"), [
    (b"../x\0", "climbs out"), (b"/etc/passwd\0", "absolute"), (b"a/../../x\0", "climbs out"),
    (b"\0", "empty"), (b"a//b\0", "plain form"), (b"./a\0", "plain form"), (b"a", "cut short"),
])  # fmt: skip
def test_hostile_deletion_lists_are_refused(listed: bytes, why: str) -> None:
    with pytest.raises(RejectedError, match=why):
        treediff.parse_deleted(listed, "evil.tar")


def test_a_deletion_of_what_the_snapshot_lacks_or_through_a_symlink(tmp_path: Path, base: Path) -> None:
    os.symlink("/etc", base / "escape")
    staged = tmp_path / "staged"
    staged.mkdir()
    for path in ("nothing", "escape/passwd", "etc/conf/x"):
        with pytest.raises(RejectedError, match="does not hold"):
            treediff.apply(base, staged, [path], label="evil.tar", snapshot="base")
    assert Path("/etc/passwd").exists()


def test_changes_never_go_through_a_symlink_of_the_target(tmp_path: Path, base: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, base / "lib")  # planted by the container in its layer
    staged = tmp_path / "staged"
    _write(staged / "lib/evil", "evil\n")  # the archive says lib is a directory
    os.chmod(staged / "lib", 0o755)
    treediff.apply(base, staged, [], label="evil.tar", snapshot="base")
    assert list(outside.iterdir()) == []
    assert (base / "lib").is_dir() and not (base / "lib").is_symlink()
    assert (base / "lib/evil").read_text() == "evil\n"
