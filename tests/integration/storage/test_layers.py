"""Layer mechanics for real (docs/clones.md): qcow2 chains with qemu-img and qemu-io, container
layers under real overlayfs mounts, and a clone's identity cleared on disk."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from virtkit.drivers.oci import idmount
from virtkit.drivers.oci.rootfs import IDMAPPED, Shift
from virtkit.errors import StateError
from virtkit.storage import identity, layertree, vmlayers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, mounts, devices)")

MiB = 1024 * 1024
SHIFT = Shift(100000, 100000, 65536, IDMAPPED)
OTHER = Shift(300000, 300000, 65536, IDMAPPED)
CAP_V3 = bytes.fromhex("0100000300200000000000000000000000000000") + SHIFT.uid.to_bytes(4, "little")


def qemu_io(disk: Path, *commands: str, backing: Path | None = None) -> str:
    args = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    done = subprocess.run([*args, str(disk)], capture_output=True, text=True, check=True)
    assert "Pattern verification failed" not in done.stdout, done.stdout
    return done.stdout


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def img(*args: str) -> None:
    done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, (args, done.stderr)  # what qemu-img said (a lock still held?)


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, Path]:
    """An image's disk (0xaa at 0) and a VM's overlay on it (0xbb at 1 MiB)."""
    base, top = tmp_path / "base.qcow2", tmp_path / "root.qcow2"
    img("create", "-q", "-f", "qcow2", str(base), "64M")
    qemu_io(base, "write -P 0xaa 0 64k")
    img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top))
    qemu_io(top, "write -P 0xbb 1M 64k")
    return base, top


def test_freeze_then_two_tops_diverge_and_the_layer_never_changes(
    chain: tuple[Path, Path], tmp_path: Path
) -> None:
    base, top = chain
    layer, clone = tmp_path / "layer.qcow2", tmp_path / "clone.qcow2"
    saved = vmlayers.freeze(top, layer, base)
    assert stat.S_IMODE(os.stat(layer).st_mode) == vmlayers.LAYER_MODE and saved[3] == 64 * MiB
    vmlayers.make_overlay(top, layer, saved[3])
    vmlayers.make_overlay(clone, layer, saved[3])
    frozen = sha(layer)
    assert vmlayers.empty(clone, layer) and not vmlayers.empty(layer, base)
    qemu_io(top, "write -P 0x01 2M 64k")
    assert not vmlayers.empty(top, layer)
    qemu_io(clone, "write -P 0x02 2M 64k")
    qemu_io(top, "read -P 0xaa 0 64k", "read -P 0xbb 1M 64k", "read -P 0x01 2M 64k")
    qemu_io(clone, "read -P 0xaa 0 64k", "read -P 0xbb 1M 64k", "read -P 0x02 2M 64k")
    assert sha(layer) == frozen


def test_freeze_undone_by_thaw(chain: tuple[Path, Path], tmp_path: Path) -> None:
    base, top = chain
    owner = os.stat(top)
    saved = vmlayers.freeze(top, tmp_path / "layer.qcow2", base)
    vmlayers.thaw(tmp_path / "layer.qcow2", top, saved)
    assert os.stat(top).st_mode == owner.st_mode and not (tmp_path / "layer.qcow2").exists()
    qemu_io(top, "read -P 0xbb 1M 64k")


def test_freeze_refuses_snapshots_tampered_headers_and_links(
    chain: tuple[Path, Path], tmp_path: Path
) -> None:
    base, top = chain
    other = tmp_path / "other.qcow2"
    img("create", "-q", "-f", "qcow2", str(other), "64M")
    with pytest.raises(StateError, match=r"names .*base\.qcow2 backing file, not .*other\.qcow2"):
        vmlayers.freeze(top, tmp_path / "layer.qcow2", other)
    img("snapshot", "-c", "snap0", str(top))
    with pytest.raises(StateError, match="internal snapshots"):
        vmlayers.freeze(top, tmp_path / "layer.qcow2", base)
    img("snapshot", "-d", "snap0", str(top))
    os.link(top, tmp_path / "second-name")
    with pytest.raises(StateError, match="2 names"):
        vmlayers.freeze(top, tmp_path / "layer.qcow2", base)
    os.unlink(tmp_path / "second-name")
    img("rebase", "-u", "-F", "qcow2", "-b", str(other), str(top))  # as QEMU's user could
    with pytest.raises(StateError, match="changed outside virtkit"):
        vmlayers.freeze(top, tmp_path / "layer.qcow2", base)
    assert top.exists() and not (tmp_path / "layer.qcow2").exists()


def test_convert_ignores_the_header_and_copies_the_whole_chain(
    chain: tuple[Path, Path], tmp_path: Path
) -> None:
    base, top = chain
    decoy = tmp_path / "decoy.qcow2"
    img("create", "-q", "-f", "qcow2", str(decoy), "64M")
    qemu_io(decoy, "write -P 0x66 0 64k")
    img("rebase", "-u", "-F", "qcow2", "-b", str(decoy), str(top))
    full = tmp_path / "full.qcow2"
    vmlayers.convert(top, base, full)
    assert "backing file" not in subprocess.run(["qemu-img", "info", str(full)], capture_output=True,
                                                text=True, check=True).stdout  # fmt: skip
    qemu_io(full, "read -P 0xaa 0 64k", "read -P 0xbb 1M 64k", "read -P 0 2M 64k")


def test_extract_a_snapshot_into_a_layer_holds_only_its_own_data(
    chain: tuple[Path, Path], tmp_path: Path
) -> None:
    base, top = chain
    img("snapshot", "-c", "snap0", str(top))
    qemu_io(top, "write -P 0xcc 1M 64k")
    layer = tmp_path / "layer.qcow2"
    vmlayers.convert(top, base, layer, snapshot="snap0", over=base)
    clone = tmp_path / "clone.qcow2"
    vmlayers.make_overlay(clone, layer, 64 * MiB)
    qemu_io(clone, "read -P 0xaa 0 64k", "read -P 0xbb 1M 64k")
    assert os.path.getsize(layer) < 2 * MiB  # the image's data stayed in the image


# --- container layers ----------------------------------------------------------------------------


def _image(top: Path) -> None:
    (top / "etc/ssh").mkdir(parents=True)
    (top / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (top / "etc/ssh/ssh_host_ed25519_key").write_text("image key")
    (top / "etc/hostname").write_text("tiny\n")
    (top / "gone").write_text("deleted by the container")
    (top / "dir").mkdir()
    (top / "dir/old").write_text("hidden by an opaque directory")


def _upper(top: Path) -> None:
    """What a container in SHIFT's range leaves in upper/: new and changed files, a whiteout, an
    opaque directory, a setuid file, a namespaced file capability, a hard link."""
    top.mkdir()
    os.chown(top, SHIFT.uid, SHIFT.gid)
    (top / "etc").mkdir()
    os.chown(top / "etc", SHIFT.uid, SHIFT.gid)
    (top / "etc/hostname").write_text("web1\n")
    os.chown(top / "etc/hostname", SHIFT.uid, SHIFT.gid)
    (top / "data").write_text("written inside")
    os.chown(top / "data", SHIFT.uid + 1000, SHIFT.gid + 1000)
    os.link(top / "data", top / "data-link")
    os.mknod(top / "gone", stat.S_IFCHR, 0)
    (top / "dir").mkdir()
    os.setxattr(top / "dir", "trusted.overlay.opaque", b"y")
    (top / "dir/new").write_text("new")
    os.chown(top / "dir/new", SHIFT.uid, SHIFT.gid)
    tool = top / "tool"
    tool.write_text("#!/bin/sh\n")
    os.chown(tool, SHIFT.uid, SHIFT.gid)
    os.chmod(tool, 0o4755)
    os.setxattr(tool, "security.capability", CAP_V3)


def _walk(top: Path) -> dict[str, tuple[object, ...]]:
    found = {}
    for path in sorted(top.rglob("*")):
        info = os.lstat(path)
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path.relative_to(top))] = (info.st_uid, info.st_gid, oct(info.st_mode), content)
    return found


def _merged(lowers: list[Path], point: Path) -> None:
    point.mkdir()
    idmount.mount_overlay("lowerdir=" + ":".join(map(str, lowers)), point)


def test_frozen_upper_shows_the_same_tree_in_its_own_ids(tmp_path: Path) -> None:
    image, upper, layer = tmp_path / "image", tmp_path / "upper", tmp_path / "layer"
    image.mkdir()
    _image(image)
    _upper(upper)
    _merged([upper, image], tmp_path / "before")
    try:
        before = _walk(tmp_path / "before")
    finally:
        idmount.unmount(tmp_path / "before")
    layertree.freeze_tree(upper, layer, SHIFT)
    assert not upper.exists()
    assert os.lstat(layer / "data").st_uid == 1000 and os.lstat(layer / "tool").st_mode & stat.S_ISUID
    cap = os.getxattr(layer / "tool", "security.capability")
    assert int.from_bytes(cap[:4], "little") >> 24 == 2  # the range's root became plain root: v2
    _merged([layer, image], tmp_path / "after")
    try:
        after = _walk(tmp_path / "after")
    finally:
        idmount.unmount(tmp_path / "after")
    assert "gone" not in after and "dir/old" not in after and after["data"][3] == b"written inside"
    def own(value: int, base: int) -> int:
        return value - base if value >= base else value

    shifted = {path: (own(uid, SHIFT.uid), own(gid, SHIFT.gid), mode, content)
               for path, (uid, gid, mode, content) in before.items()}  # fmt: skip
    assert after == shifted


def test_merged_copy_and_id_moves_round_trip(tmp_path: Path) -> None:
    image, upper = tmp_path / "image", tmp_path / "upper"
    image.mkdir()
    _image(image)
    _upper(upper)
    layertree.move_ids(upper, SHIFT, None)
    whole = tmp_path / "whole"
    layertree.merged_copy([upper, image], whole)
    _merged([upper, image], tmp_path / "view")
    try:
        assert _walk(whole) == _walk(tmp_path / "view")
    finally:
        idmount.unmount(tmp_path / "view")
    layertree.move_ids(whole, None, OTHER)
    assert os.lstat(whole / "data").st_uid == OTHER.uid + 1000
    assert os.lstat(whole / "etc/machine-id").st_uid == OTHER.uid  # the image's files too: it is whole
    layertree.move_ids(whole, OTHER, None)
    assert os.lstat(whole / "data").st_uid == 1000


def test_clear_upper_empties_machine_id_and_hides_host_keys(tmp_path: Path) -> None:
    image, upper = tmp_path / "image", tmp_path / "upper"
    image.mkdir()
    _image(image)
    upper.mkdir()
    identity.clear_upper(upper, [image], SHIFT)
    machine_id = os.lstat(upper / "etc/machine-id")
    assert machine_id.st_size == 0 and machine_id.st_uid == SHIFT.uid
    key = os.lstat(upper / "etc/ssh/ssh_host_ed25519_key")
    assert stat.S_ISCHR(key.st_mode) and key.st_rdev == 0
    assert os.lstat(upper / "etc").st_uid == SHIFT.uid
    assert (image / "etc/machine-id").read_text().strip()  # the shared layer untouched


def test_clear_disk_empties_the_machine_id_of_the_top_only(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    raw, base, top = tmp_path / "fs.raw", tmp_path / "base.qcow2", tmp_path / "root.qcow2"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(raw), "32M"], check=True, capture_output=True)
    img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(base))
    img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top))
    shared = sha(base)
    assert identity.clear_disk(top, base) == ""
    img("convert", "-f", "qcow2", "-O", "raw", str(top), str(raw))
    shown = subprocess.run(
        ["debugfs", "-R", "cat /etc/machine-id", str(raw)], capture_output=True, check=True
    )
    assert shown.stdout == b"" and sha(base) == shared
    img("check", str(top))
    not_ext = tmp_path / "blank.qcow2"
    img("create", "-q", "-f", "qcow2", str(not_ext), "8M")
    assert "not a bare ext4" in identity.clear_disk(not_ext, None)
