"""Every hostile or broken backup archive, imported as the CLI imports it (`Backups.import_archive`
on a real state root that already holds an image, an instance and a pool): each is refused with a
clear error, and afterwards the store's records and the instance, image, pool and staging
directories are exactly as they were, and nothing appeared where an archive aimed."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.storage.backupbuild import Backup, Member, container_backup, node, reg, tar_of
from tests.unit.storage.tarbuild import compress
from virtkit.errors import ConflictError, RejectedError, SpecError, VirtkitError
from virtkit.model import ImageRecord, InstanceRecord, PoolRecord, SnapshotRecord, VolumeRecord
from virtkit.ops.backup import Backups
from virtkit.ops.storage import Storage
from virtkit.storage.backupformat import VERSION
from virtkit.store import Store, open_store
from virtkit.units import MiB

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("qemu-img") is None or shutil.which("zstd") is None,
    reason="needs root, qemu-img and zstd",
)

UP = "../" * 6  # from ROOT/staging/<tmp>/trees/upper: six up is the test's tmp_path
VICTIM = b"the host's file\n"


@dataclass(frozen=True)
class Host:
    root: Path
    tmp: Path
    store: Store

    def backups(self) -> Backups:
        return Backups(self.root, self.store)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    root = tmp_path / "root"
    (tmp_path / "victim").write_bytes(VICTIM)
    with open_store(root) as store:
        kit = Host(root, tmp_path, store)
        kit.backups().import_archive(container_backup("keep").write(tmp_path / "keep.tar"))
        Storage(root, store).create_volume("default", "vol", size="16MiB")
        yield kit


def snapshot_state(host: Host) -> tuple[object, ...]:
    """What must not change: records, and every path (type, mode, owner, size) under the root but
    the locks and the database files, and what sits beside it."""
    records = tuple(
        sorted(json.dumps(r.model_dump(mode="json"), sort_keys=True) for r in host.store.list(kind))
        for kind in (InstanceRecord, ImageRecord, SnapshotRecord, PoolRecord, VolumeRecord)
    )
    paths = []
    for top in (host.root, host.tmp):
        for directory, dirs, files in os.walk(top):
            rel = os.path.relpath(directory, host.tmp)
            if rel.startswith(("root/locks", "root/cache", "root/run")):
                continue
            for name in sorted([*dirs, *files]):
                if name.startswith("virtkit.db") or (top == host.tmp and rel.startswith("root")):
                    continue
                info = os.lstat(os.path.join(directory, name))
                size = info.st_size if not os.path.isdir(os.path.join(directory, name)) else 0
                paths.append((rel, name, info.st_mode, info.st_uid, size))
    return records, tuple(sorted(set(paths)))


# --- the cases ------------------------------------------------------------------------------------


def good(name: str = "web") -> Backup:
    return container_backup(name)


def resealed(change: Callable[[Backup], None], name: str = "web") -> Callable[[Path], Path]:
    """A good backup changed by `change`, with checksums matching (a crafted archive, not a broken one)."""

    def build(where: Path) -> Path:
        backup = good(name)
        change(backup)
        backup.refresh()
        return backup.write(where / "case.tar")

    return build


def with_members(change: Callable[[list[Member]], list[Member]],
                 first: Callable[[Backup], None] | None = None) -> Callable[[Path], Path]:  # fmt: skip
    """A good backup (changed by `first`, resealed) whose members are then changed by `change`."""

    def build(where: Path) -> Path:
        backup = good()
        if first is not None:
            first(backup)
            backup.refresh()
        (where / "case.tar").write_bytes(tar_of(change(backup.members())))
        return where / "case.tar"

    return build


def relink(name: str, target: str) -> Callable[[list[Member]], list[Member]]:
    def change(members: list[Member]) -> list[Member]:
        out = []
        for info, data in members:
            if info.name == name:
                info = copy.copy(info)
                info.linkname = target
            out.append((info, data))
        return out

    return change


def part_as(info: tarfile.TarInfo, data: bytes) -> Callable[[list[Member]], list[Member]]:
    """The member files/x replaced by `info` (its name kept)."""
    info.name = "files/x"
    return lambda members: [(info, data) if m[0].name == "files/x" else m for m in members]


def declare_x(size: int) -> Callable[[Backup], None]:
    def change(backup: Backup) -> None:
        backup.manifest["files"].append({"id": "x", "file": "x", "size": size})
        backup.parts["files/x"] = ("files", b"x" * size)

    return change


def cut_in(member: str, into: int) -> bytes:
    """The good archive cut `into` bytes past the header of `member`."""
    data = tar_of(good().members())
    start = data.find(member.encode() + b"\0")
    return data[: start - (start % 512) + 512 + into]


def raw(data: Callable[[Path], bytes]) -> Callable[[Path], Path]:
    def build(where: Path) -> Path:
        (where / "case.tar").write_bytes(data(where))
        return where / "case.tar"

    return build


def cut(fraction: float, kind: str = "none") -> Callable[[Path], Path]:
    def data(_where: Path) -> bytes:
        whole = compress(tar_of(good().members()), kind)
        return whole[: int(len(whole) * fraction)]

    return raw(data)


def manifest_set(path: str, value: object) -> Callable[[Backup], None]:
    def change(backup: Backup) -> None:
        *parents, last = path.split(".")
        target = backup.manifest
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value

    return change


def tree_add(tree: str, *members: Member) -> Callable[[Backup], None]:
    return lambda backup: backup.trees[tree].extend(members)


def flip_data(members: list[Member]) -> list[Member]:
    out = []
    for info, data in members:
        if info.name == "trees/upper/root/data":
            data = b"X" + data[1:]
        out.append((info, data))
    return out


def disk_case(make: Callable[[Path, Path], None], size: int = 4 * MiB) -> Callable[[Path], Path]:
    """A VM backup whose one disk part is the qcow2 `make(path, workdir)` writes."""

    def build(where: Path) -> Path:
        backup = good()
        backup.manifest["instance"]["kind"] = "vm"
        backup.manifest["image"]["kinds"] = ["vm", "container"]
        backup.manifest["snapshots"] = []
        del backup.trees["upper"], backup.trees["upper@snap0"]
        disk = where / "made.qcow2"
        make(disk, where)
        data = disk.read_bytes()
        backup.parts["disks/root.qcow2"] = ("disks", data)
        entry = {"id": "root.qcow2", "file": "root.qcow2", "size": len(data), "virtual_size": size}
        backup.manifest["disks"] = [entry]
        backup.refresh()
        return backup.write(where / "case.tar")

    return build


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def backing(disk: Path, where: Path) -> None:
    (where / "base.raw").write_bytes(VICTIM.ljust(MiB, b"\0"))
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(where / "victim"), "-F", "raw", str(disk), "4M")


def data_file(disk: Path, where: Path) -> None:
    options = f"data_file={where / 'data'},data_file_raw=on"
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, str(disk), "4M")


def json_backing(disk: Path, where: Path) -> None:
    spec = 'json:{"driver":"raw","file":{"driver":"file","filename":"' + str(where / "victim") + '"}}'
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", spec, "-F", "raw", str(disk), "4M")


def not_qcow2(disk: Path, where: Path) -> None:
    disk.write_bytes(b"\0" * MiB)


def plain(disk: Path, where: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(disk), "8M")


def duplicate(members: list[Member]) -> list[Member]:
    data = next(m for m in members if m[0].name == "trees/upper/root/data")
    return [*members[:-1], data, members[-1]]


def before_checksums(into: int) -> bytes:
    """The good archive cut `into` bytes into its last member (the checksum list)."""
    members = good().members()
    head = len(tar_of(members[:-1])) - 10240  # less the end of archive, at most a record of padding
    data = tar_of(members)
    start = data.find(b"virtkit-backup.sha256", max(0, head - 10240))
    return data[: start - (start % 512) + into]


LNK = tarfile.LNKTYPE
LINK_X = node("h", LNK, link="x")

CASES: dict[str, tuple[Callable[[Path], Path], type[VirtkitError], str]] = {
    "not a tar": (raw(lambda _w: os.urandom(64 * 1024)), RejectedError, "not a virtkit backup"),
    "empty file": (raw(lambda _w: b""), RejectedError, "not a virtkit backup"),
    "wrong magic (a tar of something else)": (
        raw(lambda _w: tar_of([reg("etc/passwd", b"root:x:0:0\n")])), RejectedError, "first member is not"),
    "gzip of garbage": (raw(lambda _w: b"\x1f\x8b\x08\x00" + os.urandom(4000)), RejectedError, "corrupt"),
    "truncated in the manifest": (cut(0.0005), RejectedError, "truncated|not a virtkit backup"),
    "truncated in the image": (cut(0.2), RejectedError, "truncated or corrupt"),
    "truncated in the data": (raw(lambda _w: cut_in("trees/upper/root/data", 1000)), RejectedError,
                              "truncated or corrupt"),
    "truncated in the snapshot's layer": (raw(lambda _w: cut_in("trees/upper@snap0/old", 3)), RejectedError,
                                          "truncated or corrupt"),
    "truncated in the checksums": (raw(lambda _w: before_checksums(100)), RejectedError,
                                   "truncated or corrupt"),
    "truncated before the checksums": (raw(lambda _w: before_checksums(0)), RejectedError,
                                       "truncated or corrupt"),
    "truncated zstd": (cut(0.6, "zstd"), RejectedError, "truncated or corrupt"),
    "truncated gzip": (cut(0.8, "gzip"), RejectedError, "truncated or corrupt"),
    "no end-of-archive marker": (raw(lambda _w: tar_of(good().members())[:-10240 + 1024 - 512]),
                                 RejectedError, "end-of-archive|truncated"),
    "data after the end": (raw(lambda _w: tar_of(good().members()) + b"garbage" * 100), RejectedError,
                           "neither a member nor the end"),
    "checksum mismatch in a file": (with_members(flip_data), RejectedError, "sha256 of trees/upper"),
    "checksum list tampered": (with_members(lambda ms: [*ms[:-1], reg("virtkit-backup.sha256", b"{}")]),
                               RejectedError, "checksum list"),
    "no checksum list": (with_members(lambda ms: ms[:-1]), RejectedError, "before its checksum list"),
    "member after the checksum list": (with_members(lambda ms: [*ms, reg("files/x", b"x")]),
                                       RejectedError, "after the checksum list"),
    "manifest: a file ../ out": (resealed(lambda b: b.manifest["files"].append(
        {"id": "evil", "file": "../../victim", "size": 1})), RejectedError, "manifest is invalid at files"),
    "manifest: an absolute part id": (resealed(lambda b: b.manifest["disks"].append(
        {"id": "/etc/passwd", "file": "root.qcow2", "size": 1, "virtual_size": 1})), RejectedError,
        "manifest is invalid at disks"),
    "manifest: image file outside": (resealed(manifest_set("image.files", {"rootfs": "../rootfs"})),
                                     RejectedError, "manifest is invalid at image.files"),
    "tree: ../ member": (resealed(tree_add("upper", reg(UP + "victim2", b"x"))), RejectedError, "climbs out"),
    "tree: absolute member": (resealed(tree_add("upper", reg("/abs", b"x"))), RejectedError, "absolute"),
    "tree: through a symlink": (resealed(tree_add("upper", node("srv/out", tarfile.SYMTYPE, link="/"),
                                                  reg("srv/out/" + "x" * 3, b"x"))), RejectedError,
                                "through"),
    "tree: hard link to nothing": (resealed(tree_add("upper", node("h", tarfile.LNKTYPE, link="x"))),
                                   RejectedError, "hard link to 'x', which is not a file extracted before"),
    "tree: hard link into another tree": (with_members(relink("trees/upper/h", "trees/image/rootfs/motd"),
                                                       tree_add("upper", LINK_X)),
                                          RejectedError, "hard link out of its tree"),
    "tree: hard link to an absolute path": (with_members(relink("trees/upper/h", "/etc/passwd"),
                                                         tree_add("upper", LINK_X)),
                                            RejectedError, "hard link out of its tree"),
    "tree: hard link climbing out": (resealed(tree_add("upper", node("h", LNK, link=UP + "victim"))),
                                     RejectedError, "climbs out"),
    "tree: device node": (resealed(tree_add("upper", node("dev-sda", tarfile.BLKTYPE, device=(8, 0)))),
                          RejectedError, "device node"),
    "tree: character device": (resealed(tree_add("upper", node("mem", tarfile.CHRTYPE, device=(1, 1)))),
                               RejectedError, "device node"),
    "tree: unknown extended attribute": (resealed(tree_add("upper", node(
        "sel", tarfile.DIRTYPE, xattrs={"security.selinux": b"x"}))), RejectedError, "security.selinux"),
    "part: a symlink member": (with_members(part_as(*node("x", tarfile.SYMTYPE, link="/etc/passwd")),
                                            declare_x(0)), RejectedError, "not a regular file"),
    "part: a hard link member": (with_members(part_as(*node("x", LNK, link="/etc/passwd")),
                                              declare_x(0)), RejectedError, "not a regular file"),
    "part: a device member": (with_members(part_as(*node("x", tarfile.CHRTYPE, device=(1, 3))), declare_x(0)),
                              RejectedError, "not a regular file"),
    "zip bomb: a file bigger than said": (with_members(part_as(*reg("x", b"\0" * (4 * MiB))), declare_x(3)),
                                          RejectedError, "more than the 3 its manifest says"),
    "a file smaller than said": (with_members(part_as(*reg("x", b"ab")), declare_x(3)),
                                 RejectedError, "less than the 3 its manifest says"),
    "invalid instance name": (resealed(manifest_set("instance.name", "Bad_Name")), RejectedError,
                              "manifest holds an invalid instance name"),
    "name already taken": (resealed(lambda b: None, name="keep"), ConflictError, "already exists"),
    "disk with a backing file": (disk_case(backing), RejectedError, "backing file"),
    "disk with an external data file": (disk_case(data_file), RejectedError, "data file|refers to"),
    "disk with a json: backing": (disk_case(json_backing), RejectedError, "json:|backing"),
    "disk that is not qcow2": (disk_case(not_qcow2), RejectedError, "qcow2|cannot be read"),
    "disk of another size than said": (disk_case(plain), RejectedError, "not the 4194304"),
    "oversized manifest": (resealed(manifest_set("notes", ["x" * 60000] * 20)), RejectedError,
                           "more than the 1MiB"),
    "future format version": (resealed(manifest_set("version", VERSION + 1)), RejectedError,
                              "newer than this"),
    "not a virtkit manifest": (resealed(manifest_set("format", "other")), RejectedError, "not a virtkit"),
    "duplicate member": (with_members(duplicate), RejectedError, "twice"),
    "member not in the manifest": (with_members(lambda ms: [*ms[:-1], reg("files/extra", b"x"), ms[-1]]),
                                   RejectedError, "not in its manifest"),
    "zip bomb: a tree file bigger than said": (with_members(lambda ms: [
        (m if m[0].name != "trees/upper/root/data" else reg(m[0].name, m[1] * 1000, 0o600)) for m in ms]),
        RejectedError, "more than the"),
    "unlisted snapshot": (resealed(manifest_set("snapshots", [])), RejectedError, "unlisted snapshot"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_archive_is_refused_and_changes_nothing(host: Host, case: str) -> None:
    build, error, match = CASES[case]
    cases = host.tmp / "cases"
    cases.mkdir()
    (cases / "victim").write_bytes(VICTIM)
    path = build(cases)
    before = snapshot_state(host)
    with pytest.raises(error, match=match) as caught:
        host.backups().import_archive(path)
    assert caught.value.message and len(caught.value.message) < 600
    assert snapshot_state(host) == before
    assert (host.tmp / "victim").read_bytes() == VICTIM
    assert (cases / "victim").read_bytes() == VICTIM
    assert not (host.tmp / "victim2").exists()
    assert not (host.root / "staging").exists()


def test_invalid_name_argument_is_refused_before_reading(host: Host) -> None:
    path = good().write(host.tmp / "good.tar")
    with pytest.raises(SpecError, match="invalid instance name"):
        host.backups().import_archive(path, "../x")


def test_good_archive_imports_under_a_new_name(host: Host) -> None:
    path = good("keep").write(host.tmp / "good.tar")
    done = host.backups().import_archive(path, "other")
    assert done.record.name == "other" and not done.image_added  # the image is the one `keep` brought
    upper = host.root / "instances" / "other" / "upper"
    assert (upper / "root" / "data").read_bytes().startswith(b"the container's data")
    assert os.stat(upper / "root" / "data").st_ino == os.stat(upper / "root" / "link").st_ino
    assert os.getxattr(upper / "srv", "trusted.overlay.opaque") == b"y"
    assert os.major(os.lstat(upper / "motd").st_rdev) == 0
    assert host.store.get(SnapshotRecord, "other", "snap0").config["origin"] == "0" * 32


def test_a_compressed_good_archive_imports(host: Host) -> None:
    for kind in ("zstd", "gzip"):
        backup = good(f"web-{kind}")
        path = backup.write(host.tmp / f"good.tar.{kind}", kind=kind)
        assert host.backups().import_archive(path).record.name == f"web-{kind}"


def test_digest_covers_metadata(host: Host) -> None:
    """Changing only an owner (sizes and contents the same) is a checksum mismatch."""
    backup = good()
    sums = backup.checksums()
    members = backup.members(sums)
    changed = []
    for info, data in members:
        if info.name == "trees/upper/root/data":
            info = copy.copy(info)
            info.uid = 0 if info.uid else 1000
        changed.append((info, data))
    path = host.tmp / "owner.tar"
    path.write_bytes(tar_of(changed))
    with pytest.raises(RejectedError, match="sha256 of trees/upper"):
        host.backups().import_archive(path)
    assert hashlib.sha256(b"").hexdigest()  # (the list itself was left as it was)
