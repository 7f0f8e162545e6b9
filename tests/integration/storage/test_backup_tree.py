"""A container's writable layer through a backup and back: every kind of entry overlayfs and a
container put there arrives exactly (owners moved from one id range to another, file
capabilities made for the new range), metacopy entries are written whole, and what belongs to
one host only (origin file handles, sockets, device nodes) is left out."""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

import pytest

from virtkit.model import InstanceKind
from virtkit.storage import backupexport, backupread
from virtkit.storage.backupexport import Parts
from virtkit.storage.backupformat import InstanceEntry
from virtkit.storage.backuptree import CAPABILITY, IdRange, caps_v2, caps_v3, shift_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes, trusted.*)")

SOURCE = IdRange(2_000_000, 2_000_000)
TARGET = IdRange(3_000_000, 3_100_000)
CAP_V2 = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw, effective


def make_layer(top: Path, lower: Path) -> None:
    """An upper directory with one of everything, owned in the SOURCE range."""
    base = SOURCE.uid
    (top / "etc").mkdir(parents=True)
    (top / "srv" / "app").mkdir(parents=True)
    (top / "etc" / "conf").write_text("config\n")
    os.link(top / "etc" / "conf", top / "etc" / "conf-link")
    os.symlink("../etc/conf", top / "srv" / "sym")
    os.mkfifo(top / "srv" / "fifo")
    os.mknod(top / "etc" / "deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # a whiteout
    os.mknod(top / "etc" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a device: left out
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(top / "srv" / "sock"))  # a socket: left out
    server.close()
    with open(top / "srv" / "sparse", "wb") as handle:
        handle.seek(8 << 20)
        handle.write(b"end")
    (top / "srv" / "ping").write_bytes(b"\x7fELF")
    (top / "srv" / "suid").write_bytes(b"#!/bin/sh\n")
    os.setxattr(top / "srv", "trusted.overlay.opaque", b"y")
    os.setxattr(top / "srv" / "app", "trusted.overlay.redirect", b"/old-app")
    os.setxattr(top / "srv", "trusted.overlay.origin", b"\x00\xfb\x21")  # this host's file handle
    os.setxattr(top / "etc" / "conf", "user.note", b"kept")
    for path in [top, *top.rglob("*")]:
        if not path.is_socket():
            os.lchown(path, base + 1000, base + 1000) if path.name == "conf" else os.lchown(path, base, base)
    os.chmod(top / "srv" / "suid", 0o4755)
    os.setxattr(top / "srv" / "ping", CAPABILITY, caps_v3(CAP_V2, base))
    # metacopy: one entry that only shifted an image file's owner, one whose mode changed
    (lower / "bin").mkdir(parents=True)
    (lower / "bin" / "tool").write_bytes(b"the tool's data\n" * 10)
    (lower / "bin" / "same").write_bytes(b"untouched\n")
    (top / "bin").mkdir()
    for name, mode in (("tool", 0o700), ("same", 0o644)):
        (top / "bin" / name).write_bytes(b"")
        os.setxattr(top / "bin" / name, "trusted.overlay.metacopy", b"")
        os.chown(top / "bin" / name, base, base)
        os.chmod(top / "bin" / name, mode)
    os.chmod(lower / "bin" / "same", 0o644)


def export_import(tmp: Path, top: Path, lower: Path) -> tuple[Path, list[str]]:
    parts = Parts()
    backupexport.gather_tree("upper", "upper", top, None, parts, ids=SOURCE, lower=lower)
    instance = InstanceEntry(name="web", kind=InstanceKind.CONTAINER, arch="x86_64", cpus=1, memory=1 << 28,
                             uuid="12345678-1234-1234-1234-123456789abc", idmap="metacopy")  # fmt: skip
    document = backupexport.manifest(instance, None, [], parts)
    archive = backupexport.write(tmp / "layer.tar.zst", "zstd", document, parts)
    staging = tmp / "staging"
    staging.mkdir()
    staged = backupread.read(archive, staging, check=lambda manifest: None)
    tree = staged.trees["upper"]
    shift_tree(tree, TARGET)
    return tree, parts.notes


def test_a_layer_arrives_exactly_in_another_range(tmp_path: Path) -> None:
    top, lower = tmp_path / "upper", tmp_path / "lower"
    make_layer(top, lower)
    tree, notes = export_import(tmp_path, top, lower)
    moved, moved_gid = TARGET.uid - SOURCE.uid, TARGET.gid - SOURCE.gid
    for path in top.rglob("*"):
        relative = path.relative_to(top)
        if path.is_socket() or relative == Path("etc/null") or relative.parts[0] == "bin":
            continue
        before, after = os.lstat(path), os.lstat(tree / relative)
        assert stat.S_IFMT(before.st_mode) == stat.S_IFMT(after.st_mode), relative
        assert stat.S_IMODE(before.st_mode) == stat.S_IMODE(after.st_mode), relative
        assert (after.st_uid, after.st_gid) == (before.st_uid + moved, before.st_gid + moved_gid), relative
        assert int(before.st_mtime) == int(after.st_mtime), relative
        if stat.S_ISREG(before.st_mode):
            assert path.read_bytes() == (tree / relative).read_bytes()
    assert os.lstat(tree / "etc" / "conf").st_ino == os.lstat(tree / "etc" / "conf-link").st_ino
    assert os.readlink(tree / "srv" / "sym") == "../etc/conf"
    whiteout = os.lstat(tree / "etc" / "deleted")
    assert whiteout.st_rdev == 0 and stat.S_ISCHR(whiteout.st_mode)
    assert os.getxattr(tree / "srv", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(tree / "srv" / "app", "trusted.overlay.redirect") == b"/old-app"
    assert "trusted.overlay.origin" not in os.listxattr(tree / "srv")
    assert os.getxattr(tree / "etc" / "conf", "user.note") == b"kept"
    assert os.getxattr(tree / "srv" / "ping", CAPABILITY) == caps_v3(CAP_V2, TARGET.uid)
    assert os.stat(tree / "srv" / "suid").st_mode & stat.S_ISUID
    assert os.lstat(tree / "srv" / "sparse").st_blocks * 512 < 1 << 20  # its hole stayed a hole
    assert not (tree / "etc" / "null").exists() and not (tree / "srv" / "sock").exists()
    assert any("device nodes" in note for note in notes) and any("sockets" in note for note in notes)
    # metacopy: the changed entry is whole (data from the image, no metacopy mark); the other is not there
    assert (tree / "bin" / "tool").read_bytes() == (lower / "bin" / "tool").read_bytes()
    assert "trusted.overlay.metacopy" not in os.listxattr(tree / "bin" / "tool")
    assert stat.S_IMODE(os.lstat(tree / "bin" / "tool").st_mode) == 0o700
    assert not (tree / "bin" / "same").exists()


def test_capabilities_change_version_both_ways() -> None:
    v3 = caps_v3(CAP_V2, 1_000_000)
    assert len(v3) == 24 and struct.unpack_from("<I", v3, 20)[0] == 1_000_000
    assert caps_v2(v3) == CAP_V2
    assert caps_v2(CAP_V2) == CAP_V2 and caps_v3(v3, 5) == v3  # already in the wanted version
