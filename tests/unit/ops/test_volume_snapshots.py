"""Snapshots of pool volumes (ops/volumesnaps.py) over a real store, real directories and GNU cp,
with the FakeDriver as the instance a volume is attached to: a filesystem volume's tree taken and
put back exactly, what an attached instance's state allows, bad input and failures leaving the
store and the pool's directory as they were. (Block volumes with real qemu-img: the e2e test.)"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from virtkit.drivers.fake import FakeDriver
from virtkit.errors import (
    ConflictError,
    NotFoundError,
    SpecError,
    StateError,
    StoreError,
    ToolError,
    VirtkitError,
)
from virtkit.model import (
    InstanceKind,
    InstanceRecord,
    InstanceState,
    VolumeAttachment,
    VolumeRecord,
    VolumeSnapshotRecord,
    VolumeType,
)
from virtkit.ops.storage import Storage
from virtkit.ops.volumesnaps import VolumeSnapshots
from virtkit.storage import snapshots, vmsnap, volumesnap
from virtkit.store import SqliteStore

Tree = dict[str, tuple[object, ...]]


@pytest.fixture
def storage(root: Path, store: SqliteStore) -> Storage:
    made = Storage(root, store)
    made.create_volume("default", "www", type="filesystem")
    return made


@pytest.fixture
def snaps(root: Path, store: SqliteStore, storage: Storage, fake: FakeDriver) -> VolumeSnapshots:
    return VolumeSnapshots(root, store, drivers=lambda kind: fake, now=iter(range(1000, 2000)).__next__)


def volume_dir(storage: Storage, name: str = "www") -> Path:
    return storage.path_of(storage.volume("default", name))


def tree(top: Path) -> Tree:
    """Every entry under `top` (itself too): type and mode, owner, size, content digest or link
    target, xattrs, and which entries share an inode."""
    found: Tree = {}
    inodes: dict[int, str] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        info = path.lstat()
        rel = str(path.relative_to(top))
        if stat.S_ISREG(info.st_mode):
            what: object = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(info.st_mode):
            what = os.readlink(path)
        else:
            what = None
        xattrs = {} if stat.S_ISLNK(info.st_mode) else {k: os.getxattr(path, k) for k in os.listxattr(path)}
        link = (
            inodes.setdefault(info.st_ino, rel)
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode)
            else ""
        )
        found[rel] = (stat.filemode(info.st_mode), info.st_uid, info.st_gid, info.st_size, what, xattrs, link,
                      info.st_mtime_ns if not stat.S_ISLNK(info.st_mode) else 0)  # fmt: skip
    return found


def fill(top: Path) -> None:
    """A volume as a container leaves one: nested files, owners, setuid, a symlink, a hard link,
    a sparse file, a FIFO, an extended attribute."""
    (top / "etc").mkdir()
    (top / "etc" / "app.conf").write_text("port = 80\n")
    (top / "home" / "user").mkdir(parents=True)
    (top / "home" / "user" / "notes").write_bytes(os.urandom(70000))
    os.chown(top / "home" / "user", 1000, 1000)
    os.chown(top / "home" / "user" / "notes", 1000, 1000)
    (top / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(top / "tool", 0o4755)
    os.symlink("../etc/app.conf", top / "home" / "link")
    os.link(top / "etc" / "app.conf", top / "etc" / "hard")
    with open(top / "sparse", "wb") as sparse:
        sparse.truncate(8 << 20)
        sparse.write(b"head")
    os.mkfifo(top / "fifo")
    os.setxattr(top / "etc" / "app.conf", "user.origin", b"tests")


def state(store: SqliteStore, root: Path, *, parents: bool = True) -> tuple[object, ...]:
    """The store's volume and snapshot rows, and every entry of the default pool's directory (without
    `parents`, directories' modification times aside: a step made and undone changes its parent's)."""
    with sqlite3.connect(f"file:{root / 'virtkit.db'}?mode=ro", uri=True) as conn:
        rows = [
            conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("volumes", "volume_snapshots")
        ]
    entries = tree(root / "pools" / "default")
    if not parents:
        entries = {k: v[:-1] if str(v[0]).startswith("d") else v for k, v in entries.items()}
    return rows, entries


def attach(
    store: SqliteStore, fake: FakeDriver, volume: str, kind: InstanceKind, state: InstanceState
) -> str:
    """An instance `volume` is attached to (as far as the records say), in `state`."""
    record = store.create(InstanceRecord(name="i1", kind=kind, image="tiny"))
    fake.states[record.uuid] = state
    held = store.get(VolumeRecord, "default", volume)
    store.put(held.model_copy(update={"attached_to": "i1"}))
    return record.uuid


def test_a_filesystem_volume_is_taken_and_put_back_exactly(
    storage: Storage, snaps: VolumeSnapshots, root: Path
) -> None:
    top = volume_dir(storage)
    fill(top)
    first = tree(top)
    record, notes = snaps.create("default", "www")
    assert (record.name, record.type, record.live, notes) == ("snap0", VolumeType.FILESYSTEM, False, ())
    assert record.size > 70000 and record.created_at == 1000
    home = root / "pools" / "default" / "filesystem" / ".www.snapshots"
    assert tree(home / "snap0") == first  # everything kept: owners, modes, links, holes, xattrs, times
    assert stat.S_IMODE(home.stat().st_mode) == 0o700 and home.stat().st_uid == 0
    assert not any("snap" in p.name for p in top.rglob("*"))  # never inside the volume

    (top / "etc" / "app.conf").write_text("port = 8080\n")
    (top / "home" / "user" / "notes").unlink()
    (top / "new").write_text("added after")
    assert snaps.create("default", "www", "changed")[0].name == "changed"
    changed = tree(top)
    assert snaps.create("default", "www")[0].name == "snap1"

    assert snaps.restore("default", "www", "snap0") == (snaps.get("default", "www", "snap0"), ())
    assert tree(top) == first
    assert tree(home / "snap0") == first  # the snapshot is left as it was: restored again later
    snaps.restore("default", "www", "changed")
    assert tree(top) == changed
    assert sorted(os.listdir(top.parent)) == [".www.snapshots", "www"]  # no staging copy left

    assert [s.name for s in snaps.list("default", "www")] == ["snap0", "changed", "snap1"]
    assert storage.volume_view("default", "www").snapshots == 3
    snaps.delete("default", "www", "changed")
    assert sorted(os.listdir(home)) == ["snap0", "snap1"]
    with pytest.raises(NotFoundError, match="snapshot 'changed' of volume 'www' of pool 'default' not found"):
        snaps.restore("default", "www", "changed")


def test_deleting_a_volume_deletes_its_snapshots(
    storage: Storage, snaps: VolumeSnapshots, store: SqliteStore, root: Path
) -> None:
    storage.create_volume("default", "other", type="filesystem")
    (volume_dir(storage) / "data").write_text("x")
    snaps.create("default", "www")
    snaps.create("default", "www", "two")
    kept = snaps.create("default", "other")[0]
    storage.delete_volume("default", "www")
    assert sorted(os.listdir(root / "pools" / "default" / "filesystem")) == [".other.snapshots", "other"]
    assert store.list(VolumeSnapshotRecord) == [kept]
    storage.create_volume("default", "www", type="filesystem")  # the name again: no snapshot comes back
    assert snaps.list("default", "www") == []
    assert snaps.create("default", "www")[0].name == "snap0"


def test_bad_input_is_refused_and_changes_nothing(
    storage: Storage, snaps: VolumeSnapshots, store: SqliteStore, root: Path
) -> None:
    snaps.create("default", "www", "taken")
    before = state(store, root)
    cases: list[tuple[type[VirtkitError], str, tuple[str, ...]]] = [
        (SpecError, "invalid snapshot name '../x'", ("default", "www", "../x")),
        (SpecError, "invalid snapshot name 'Bad_Name'", ("default", "www", "Bad_Name")),
        (SpecError, "invalid snapshot name: it is empty", ("default", "www", "")),
        (SpecError, "invalid volume name '../www'", ("default", "../www", "s")),
        (SpecError, "invalid pool name 'Default'", ("Default", "www", "s")),
        (NotFoundError, "pool 'nope' not found", ("nope", "www", "s")),
        (NotFoundError, "volume 'nope' in pool 'default' not found", ("default", "nope", "s")),
    ]
    for error, words, args in cases:
        for verb in (snaps.create, snaps.restore, snaps.delete):
            with pytest.raises(error, match=words.replace("(", r"\(")):
                verb(*args)
    with pytest.raises(
        ConflictError, match="snapshot 'taken' of volume 'www' of pool 'default' already exists"
    ):
        snaps.create("default", "www", "taken")
    for verb in (snaps.restore, snaps.delete, snaps.get):
        with pytest.raises(NotFoundError, match="snapshot 'nope' of volume 'www'"):
            verb("default", "www", "nope")
    assert state(store, root) == before


def test_a_failed_copy_or_record_leaves_nothing(
    storage: Storage, snaps: VolumeSnapshots, store: SqliteStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(volume_dir(storage))
    before = state(store, root, parents=False)
    # a cp that copies everything, then fails (as with a full disk at the last file)
    broken = ("sh", "-c", 'cp -a "$0" "$1" && echo "cp: No space left on device" >&2; exit 1')
    monkeypatch.setattr(snapshots, "CP_ARGS", broken)
    with pytest.raises(ToolError, match=r"copying volume www.*No space left"):
        snaps.create("default", "www")
    assert state(store, root, parents=False) == before  # no record, no copy, no snapshots directory
    monkeypatch.undo()

    def refused(record: object) -> object:
        raise StoreError("the state database is read-only")

    monkeypatch.setattr(store, "create", refused)
    with pytest.raises(StoreError, match="read-only"):
        snaps.create("default", "www", "s1")
    assert state(store, root, parents=False) == before
    monkeypatch.undo()

    snaps.create("default", "www", "s1")
    (volume_dir(storage) / "etc" / "app.conf").write_text("changed\n")
    before = state(store, root, parents=False)
    monkeypatch.setattr(snapshots, "CP_ARGS", broken)
    with pytest.raises(ToolError, match="copying snapshot s1 of volume www"):
        snaps.restore("default", "www", "s1")
    assert state(store, root, parents=False) == before  # the volume as it was, no staging copy left


def test_a_block_volume_failing_in_qemu_img_gets_no_record(
    storage: Storage, snaps: VolumeSnapshots, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.store.create(
        VolumeRecord(pool="default", name="disk", size=1 << 30)
    )  # no file: qemu-img is faked
    asked: list[list[str]] = []

    def qemu_img(path: Path, args: list[str], what: str, *, write: bool = True) -> str:
        asked.append(args)
        if args[0] == "snapshot":
            raise ToolError(f"{what}: qemu-img failed (exit 1): No space left on device")
        return '{"snapshots": []}'

    monkeypatch.setattr(vmsnap, "qemu_img", qemu_img)
    with pytest.raises(ToolError, match="snapshotting volume disk: qemu-img failed"):
        snaps.create("default", "disk")
    assert asked[-1] == ["snapshot", "-q", "-c", "snap0", "--image-opts"]
    assert store.list(VolumeSnapshotRecord) == []


def test_a_running_container_is_frozen_for_the_copy(
    storage: Storage, snaps: VolumeSnapshots, store: SqliteStore, fake: FakeDriver
) -> None:
    (volume_dir(storage) / "log").write_text("one\n")
    uuid = attach(store, fake, "www", InstanceKind.CONTAINER, InstanceState.RUNNING)
    record, notes = snaps.create("default", "www")
    assert record.live and fake.calls == ["pause", "resume"] and fake.states[uuid] is InstanceState.RUNNING
    assert notes == ("taken while i1 ran (frozen while it was copied): consistent as after a power cut",)

    fake.states[uuid] = InstanceState.PAUSED
    fake.calls.clear()
    assert snaps.create("default", "www")[1] == (
        "taken while i1 ran (paused): consistent as after a power cut",
    )
    assert fake.calls == [] and fake.states[uuid] is InstanceState.PAUSED  # left paused

    fake.states[uuid] = InstanceState.RUNNING
    fake.fail_on.add("resume")
    before = [s.name for s in snaps.list("default", "www")]
    with pytest.raises(ToolError, match="fake resume failed"):
        snaps.create("default", "www")
    assert [s.name for s in snaps.list("default", "www")] == before
    assert sorted(os.listdir(volumesnap.home(volume_dir(storage)))) == ["snap0", "snap1"]


def test_restore_is_refused_under_a_running_instance(
    storage: Storage, snaps: VolumeSnapshots, store: SqliteStore, fake: FakeDriver, root: Path
) -> None:
    top = volume_dir(storage)
    (top / "log").write_text("one\n")
    snaps.create("default", "www")
    (top / "log").write_text("two\n")
    uuid = attach(store, fake, "www", InstanceKind.CONTAINER, InstanceState.RUNNING)
    before = state(store, root)
    for live in (InstanceState.RUNNING, InstanceState.PAUSED):
        fake.states[uuid] = live
        with pytest.raises(StateError, match=f"attached to i1, which is {live}") as caught:
            snaps.restore("default", "www", "snap0")
        assert caught.value.hint == "stop it first: virtkit stop i1"
    assert state(store, root) == before
    snaps.delete("default", "www", "snap0")  # a copy beside the volume: nothing the container uses
    snaps.create("default", "www")

    fake.states[uuid] = InstanceState.STOPPED
    (top / "log").write_text("three\n")
    snaps.restore("default", "www", "snap0")
    assert (top / "log").read_text() == "two\n"
    assert store.get(VolumeRecord, "default", "www").attached_to == "i1"  # still attached


def test_a_running_vms_block_volume_is_snapshotted_by_its_qemu(
    storage: Storage,
    snaps: VolumeSnapshots,
    store: SqliteStore,
    fake: FakeDriver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage.create_volume("default", "disk", size="64MiB")
    store.create(VolumeSnapshotRecord(pool="default", volume="disk", name="old", type=VolumeType.BLOCK))
    attach(store, fake, "disk", InstanceKind.VM, InstanceState.RUNNING)
    record = store.get(InstanceRecord, "i1")
    record.volumes = [VolumeAttachment(pool="default", name="disk", type=VolumeType.BLOCK, format="qcow2",
                                       source="/x.qcow2", device="vol0")]  # fmt: skip
    store.put(record)
    inside = ["old"]
    monkeypatch.setattr(volumesnap, "tags", lambda disk: list(inside))
    monkeypatch.setattr(vmsnap, "qemu_img", None)  # never reached: its QEMU holds the disk
    asked: list[tuple[str, str, bool]] = []

    def snapshot_volume(rec: InstanceRecord, paths: object, vol: VolumeAttachment, name: str, *,
                        delete: bool = False) -> None:  # fmt: skip
        asked.append((vol.device, name, delete))

    monkeypatch.setattr(fake, "snapshot_volume", snapshot_volume, raising=False)
    taken, notes = snaps.create("default", "disk", "live")
    assert asked == [("vol0", "live", False)] and taken.live
    assert notes and "taken by the QEMU of i1 while it ran" in notes[0]
    with pytest.raises(StateError, match="attached to i1, which is running") as caught:
        snaps.restore("default", "disk", "live")
    assert caught.value.hint is not None and "virtkit stop i1" in caught.value.hint
    snaps.delete("default", "disk", "old")
    assert asked[-1] == ("vol0", "old", True)
    assert [s.name for s in store.list(VolumeSnapshotRecord)] == ["live"]

    monkeypatch.delattr(fake, "snapshot_volume")  # a driver that cannot: refused, nothing recorded
    with pytest.raises(StateError, match="cannot snapshot it while it runs"):
        snaps.create("default", "disk", "more")
    assert [s.name for s in store.list(VolumeSnapshotRecord)] == ["live"]


def test_lost_data_is_said_before_anything_changes(
    storage: Storage, snaps: VolumeSnapshots, store: SqliteStore, root: Path
) -> None:
    (volume_dir(storage) / "f").write_text("x")
    snaps.create("default", "www")
    volumesnap.drop_dir(volume_dir(storage), "snap0")  # gone behind virtkit's back
    before = state(store, root)
    with pytest.raises(
        StateError, match="snapshot snap0 of volume 'www' of pool 'default' has lost its data"
    ):
        snaps.restore("default", "www", "snap0")
    assert state(store, root) == before
    snaps.delete("default", "www", "snap0")  # what is already gone is fine
    assert snaps.list("default", "www") == []
