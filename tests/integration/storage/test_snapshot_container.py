"""A container's writable layer for real: the copy keeps everything overlayfs reads in an upper
directory (owners in a user-namespace range, modes, trusted.overlay.* and security.* attributes,
whiteouts, hard links, holes), and a snapshot restored under a real overlay mount shows exactly the
tree it was taken of."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.errors import StateError, ToolError
from virtkit.storage.containersnap import ContainerBackend, overlay_uses
from virtkit.storage.snapshots import CP_ARGS, copy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, devices, trusted.* xattrs)")

BASE = 100000  # a container's id range, as idmap.py allocates them
CAP_NET_RAW_V2 = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep
# A namespaced (v3) capability: what setcap inside a user namespace writes, with the range's root.
CAP_NET_RAW_V3 = bytes.fromhex("0100000300200000000000000000000000000000") + BASE.to_bytes(4, "little")


Entry = tuple[object, ...]


def describe(top: Path) -> dict[str, Entry]:
    """Everything about a tree a root filesystem depends on, by relative path (no ctime, no inode
    numbers: hard links appear as the set of names of each inode instead)."""
    seen: dict[tuple[int, int], list[str]] = {}
    tree: dict[str, Entry] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        info = os.lstat(path)
        name = str(path.relative_to(top))
        xattrs = {key: os.getxattr(path, key, follow_symlinks=False)
                  for key in sorted(os.listxattr(path, follow_symlinks=False))}  # fmt: skip
        content: object = None
        if stat.S_ISREG(info.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        seen.setdefault((info.st_dev, info.st_ino), []).append(name)
        mtime = info.st_mtime_ns if not stat.S_ISLNK(info.st_mode) else None
        tree[name] = (info.st_uid, info.st_gid, oct(info.st_mode), info.st_rdev, info.st_size, mtime, xattrs,
                      content)  # fmt: skip
    links = sorted(sorted(names) for names in seen.values() if len(names) > 1)
    tree["<hard links>"] = (links,)
    return tree


def make_upper(top: Path) -> None:
    """An upper directory as a user-namespaced container leaves it, with every kind of entry."""
    top.mkdir()
    os.chown(top, BASE, BASE)
    os.setxattr(top, "trusted.overlay.uuid", os.urandom(16))
    (top / "etc").mkdir()
    os.chown(top / "etc", BASE, BASE)
    os.setxattr(top / "etc", "trusted.overlay.impure", b"y")
    os.mknod(top / "etc" / "deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # a whiteout
    os.chown(top / "etc" / "deleted", BASE, BASE)
    (top / "opaque").mkdir(mode=0o1777)
    os.chmod(top / "opaque", 0o1777)
    os.setxattr(top / "opaque", "trusted.overlay.opaque", b"y")
    (top / "moved").mkdir()
    os.setxattr(top / "moved", "trusted.overlay.redirect", b"/old-place")
    tool = top / "ping"
    tool.write_bytes(b"\x7fELF pretend")
    os.chown(tool, BASE, BASE + 5)
    os.chmod(tool, 0o4755)  # setuid: a chown after this would clear it
    os.setxattr(tool, "security.capability", CAP_NET_RAW_V2)
    nscap = top / "nsping"
    nscap.write_bytes(b"\x7fELF namespaced")
    os.chown(nscap, BASE, BASE)
    os.setxattr(nscap, "security.capability", CAP_NET_RAW_V3)
    meta = top / "chowned-lower-file"  # metacopy: metadata only, the data is still the lower file's
    meta.touch()
    os.chown(meta, BASE + 33, BASE + 33)
    os.setxattr(meta, "trusted.overlay.metacopy", b"")
    os.setxattr(meta, "trusted.overlay.origin", os.urandom(24))
    data = top / "data"
    data.write_bytes(b"shared inode\n")
    os.chown(data, BASE + 1000, BASE + 1000)
    os.link(data, top / "etc" / "data-link")
    os.setxattr(data, "user.comment", b"kept")
    with (top / "sparse").open("wb") as sparse:
        sparse.truncate(256 << 20)
        sparse.seek(128 << 20)
        sparse.write(b"middle")
    os.symlink("/etc/nowhere", top / "dangling")
    os.lchown(top / "dangling", BASE + 7, BASE + 7)
    os.mkfifo(top / "fifo", 0o600)
    os.utime(data, ns=(1_000_000_123, 2_000_000_456))


def test_the_copy_keeps_everything_overlayfs_needs(tmp_path: Path) -> None:
    source, dest = tmp_path / "upper", tmp_path / "copy"
    make_upper(source)
    copy(source, dest, what="test copy")
    assert describe(dest) == describe(source)
    assert os.lstat(dest / "sparse").st_blocks * 512 < 1 << 20  # the 256 MiB hole stayed a hole
    assert os.lstat(dest / "data").st_ino != os.lstat(source / "data").st_ino  # a copy, not the same files
    assert "--preserve=mode,ownership,timestamps,links,xattr" in CP_ARGS


def test_a_failed_copy_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="cp failed"):
        copy(tmp_path / "missing", tmp_path / "copy", what="test copy")
    assert not (tmp_path / "copy").exists()
    (tmp_path / "there").mkdir()
    with pytest.raises(StateError, match="already exists"):
        copy(tmp_path / "missing", tmp_path / "there", what="test copy")


LAYERS = ("lower", "upper", "work", "merged")


class Overlay:
    """A real overlay mount: lower (the image), upper and work (the container's), merged."""

    def __init__(self, top: Path, options: str) -> None:
        self.lower, self.upper, self.work, self.merged = (top / n for n in LAYERS)
        self.options = options
        for path in (self.lower, self.upper, self.work, self.merged):
            path.mkdir()

    def mount(self) -> None:
        options = f"lowerdir={self.lower},upperdir={self.upper},workdir={self.work}{self.options}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.merged)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.merged)], check=True)

    def shows(self) -> dict[str, Entry]:
        """What the container sees (but the mount point itself, whose times the mount sets)."""
        return {name: entry for name, entry in describe(self.merged).items() if name != "."}


@pytest.fixture(params=["", ",metacopy=on"], ids=["plain", "metacopy"])
def overlay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Overlay]:
    made = Overlay(tmp_path, str(request.param))
    lower = made.lower
    (lower / "etc").mkdir()
    (lower / "etc" / "hostname").write_text("image\n")
    (lower / "etc" / "passwd").write_text("root:x:0:0\n")
    (lower / "var" / "cache").mkdir(parents=True)
    (lower / "var" / "cache" / "big").write_bytes(b"lower data" * 1000)
    (lower / "bin").mkdir()
    (lower / "bin" / "tool").write_bytes(b"tool")
    os.chown(made.upper, BASE, BASE)
    os.chown(made.work, BASE, BASE)
    yield made
    if overlay_uses(made.upper):
        made.unmount()


def test_restore_shows_the_snapshot_tree_through_a_real_overlay(overlay: Overlay, tmp_path: Path) -> None:
    merged = overlay.merged
    overlay.mount()
    (merged / "etc" / "hostname").write_text("c1\n")  # copy-up
    (merged / "etc" / "passwd").unlink()  # a whiteout
    subprocess.run(["rm", "-rf", str(merged / "var" / "cache")], check=True)
    (merged / "var" / "cache").mkdir()  # an opaque directory
    (merged / "var" / "cache" / "new").write_text("fresh\n")
    os.chown(merged / "bin" / "tool", BASE + 5, BASE + 5)  # metadata-only copy-up with metacopy
    (merged / "home").mkdir()
    (merged / "home" / "notes").write_text("mine\n")
    os.link(merged / "home" / "notes", merged / "home" / "notes-link")
    os.chown(merged / "home" / "notes", BASE + 1000, BASE + 1000)
    at_snapshot = overlay.shows()
    overlay.unmount()

    backend = ContainerBackend(overlay.upper, overlay.work)
    into = tmp_path / "snap"
    into.mkdir(mode=0o700)
    captured = backend.capture("s1", into)
    assert captured.files == ("upper",) and captured.size > 0

    overlay.mount()
    (merged / "home" / "notes").write_text("changed\n")
    (merged / "etc" / "passwd").write_text("back, but wrong\n")
    (merged / "etc" / "hostname").unlink()
    (merged / "bin" / "tool").write_bytes(b"rewritten")
    (merged / "later").write_text("after the snapshot\n")
    assert overlay.shows() != at_snapshot
    with pytest.raises(StateError, match="still mounted"):
        backend.restore("s1", captured, into)  # refused while the overlay uses it: nothing changed
    assert (merged / "later").exists()
    overlay.unmount()

    work_owner = os.lstat(overlay.work)[4:6]
    backend.restore("s1", captured, into)
    assert os.listdir(overlay.work) == [] and os.lstat(overlay.work)[4:6] == work_owner
    assert describe(into / "upper") == describe(overlay.upper)  # the snapshot itself is intact
    overlay.mount()
    assert overlay.shows() == at_snapshot
    assert (merged / "bin" / "tool").read_bytes() == b"tool"  # with metacopy: the data from lower again
    assert not (merged / "etc" / "passwd").exists() and not (merged / "later").exists()
    assert sorted(os.listdir(merged / "var" / "cache")) == ["new"]
    leftovers = [name for name in os.listdir(tmp_path) if ".vktmp." in name]
    assert leftovers == []


def test_overlay_uses_reads_mountinfo_escapes(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "36 25 0:32 / /x rw,relatime shared:1 - overlay overlay "
        "rw,lowerdir=/l,upperdir=/a\\040b/upper,workdir=/w\n"
    )
    assert overlay_uses(Path("/a b/upper"), info)
    assert not overlay_uses(Path("/a b/upper2"), info)
    assert not overlay_uses(Path("/a"), info)
