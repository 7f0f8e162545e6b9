"""The snapshot verbs over the FakeDriver, a fake backend and a real SQLite store: names, states,
freezing, restarting, and every failure leaving neither record nor data (the real backends are
tested in tests/integration/storage/test_snapshot_*.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from virtkit.drivers.base import InstancePaths
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
from virtkit.model import InstanceKind, InstanceRecord, InstanceState, SnapshotRecord
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.ops.snapshots import Snapshots
from virtkit.storage.snapshots import Backend, Captured
from virtkit.store import SqliteStore


@dataclass
class FakeBackend:
    """Keeps a snapshot as one file, `state`, copied from the instance's `state` file; a stateful one
    also keeps its `ram` file, which load_state puts back (and says its copied files are
    `state_files`: with some, a running VM is stopped to restore them)."""

    home: Path
    calls: list[str]
    fail_on: set[str] = field(default_factory=set)
    freeze: bool = True
    state_files: tuple[str, ...] = ()

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail_on:
            raise ToolError(f"fake {name} failed")

    def forget(self, name: str) -> None:
        self._step("forget")

    def capture(self, name: str, into: Path) -> Captured:
        (into / "state").write_bytes((self.home / "state").read_bytes())
        self._step("capture")
        return Captured(files=("state",), size=5)

    def capture_state(self, name: str, into: Path) -> Captured:
        (into / "state").write_bytes((self.home / "state").read_bytes())
        (into / "ram").write_bytes((self.home / "ram").read_bytes())
        self._step("capture_state")
        return Captured(files=self.state_files, size=7, stateful=True)

    def load_state(self, name: str, captured: Captured) -> None:
        self._step("load_state")
        (self.home / "ram").write_bytes((self.home / "snapshots" / name / "ram").read_bytes())
        (self.home / "state").write_bytes((self.home / "snapshots" / name / "state").read_bytes())

    def check(self, name: str, captured: Captured, source: Path) -> None:
        self._step("check")
        if not (source / "state").is_file():
            raise StateError(f"snapshot {name} has lost its data")

    def restore(self, name: str, captured: Captured, source: Path) -> None:
        self._step("restore")
        (self.home / "state").write_bytes((source / "state").read_bytes())

    def remove(self, name: str, captured: Captured) -> None:
        self._step("remove")


@pytest.fixture
def fake() -> FakeDriver:
    return FakeDriver(InstanceKind.CONTAINER)


@pytest.fixture
def backend_fail() -> set[str]:
    return set()


@pytest.fixture
def snaps(root: Path, store: SqliteStore, fake: FakeDriver, backend_fail: set[str]) -> Snapshots:
    def backends(record: InstanceRecord, paths: InstancePaths, live: bool) -> Backend:
        fake.calls.append(f"backend live={live}")
        return FakeBackend(paths.dir, fake.calls, backend_fail)

    return Snapshots(root, store, drivers=lambda kind: fake, backends=backends)


def make(life: Lifecycle, name: str = "c1", *, running: bool = False) -> Path:
    life.create(Request(image="tiny", name=name, kind=InstanceKind.CONTAINER))
    home = life.paths(name).dir
    (home / "state").write_text("one\n")
    if running:
        life.start(name)
    return home


def tree(path: Path) -> list[str]:
    """The files of a state root but its database and lock files (which any verb touches)."""
    found = (p for p in path.rglob("*") if "locks" not in p.parts and not p.name.startswith("virtkit.db"))
    return sorted(str(p.relative_to(path)) for p in found)


def test_default_names_count_up_like_incus(life: Lifecycle, snaps: Snapshots) -> None:
    make(life)
    assert snaps.create("c1")[0].name == "snap0"
    assert snaps.create("c1")[0].name == "snap1"
    assert snaps.create("c1", "daily")[0].name == "daily"
    snaps.delete("c1", "snap0")
    assert snaps.create("c1")[0].name == "snap2"  # never a number below one in use
    assert [s.name for s in snaps.list("c1")] == ["snap1", "daily", "snap2"]


def test_create_stopped_keeps_record_and_data(life: Lifecycle, snaps: Snapshots, fake: FakeDriver) -> None:
    home = make(life)
    fake.calls.clear()
    record, notes = snaps.create("c1", "s1")
    assert (record.instance, record.name, record.size, record.files) == ("c1", "s1", 5, ["state"])
    assert record.live is False
    assert record.stateful is False and notes == ()
    assert (home / "snapshots" / "s1" / "state").read_text() == "one\n"
    assert os.stat(home / "snapshots").st_mode & 0o777 == 0o700
    assert fake.calls == ["backend live=False", "forget", "capture"]  # nothing to freeze
    view = snaps.view("c1", "s1")
    assert view.path == home / "snapshots" / "s1" and view.to_dict()["kind"] == "container"


def test_a_running_container_is_frozen_while_copied(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver
) -> None:
    make(life, running=True)
    fake.calls.clear()
    assert snaps.create("c1", "s1")[0].live is True
    assert fake.calls == ["backend live=True", "forget", "pause", "capture", "resume"]
    assert fake.states[life.view("c1").record.uuid] is InstanceState.RUNNING


def test_a_paused_instance_is_not_frozen_again(life: Lifecycle, snaps: Snapshots, fake: FakeDriver) -> None:
    make(life, running=True)
    life.pause("c1")
    fake.calls.clear()
    snaps.create("c1", "s1")
    assert "pause" not in fake.calls and "resume" not in fake.calls
    assert life.view("c1").status.state is InstanceState.PAUSED


@pytest.mark.parametrize("step", ["capture", "resume"])
def test_a_failed_create_leaves_nothing(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, root: Path, backend_fail: set[str], step: str
) -> None:
    make(life, running=True)
    before = tree(root)
    (backend_fail if step == "capture" else fake.fail_on).add(step)
    with pytest.raises(ToolError, match=f"fake {step} failed"):
        snaps.create("c1", "s1")
    assert snaps.list("c1") == []
    assert sorted({*tree(root)} - {"instances/c1/snapshots"}) == before  # an empty snapshots directory
    assert os.listdir(root / "instances" / "c1" / "snapshots") == []
    if step == "resume":
        assert "remove" in fake.calls  # what the backend made is removed again


def test_a_failed_record_write_removes_the_data(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(life)

    def refuse(record: object) -> object:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "create", refuse)
    with pytest.raises(StoreError, match="disk full"):
        snaps.create("c1", "s1")
    monkeypatch.undo()
    assert snaps.list("c1") == [] and "remove" in fake.calls
    assert os.listdir(root_of(life) / "snapshots") == []


def root_of(life: Lifecycle) -> Path:
    return life.paths("c1").dir


def test_what_a_crashed_create_left_is_cleared(life: Lifecycle, snaps: Snapshots, fake: FakeDriver) -> None:
    home = make(life)
    (home / "snapshots" / "s1").mkdir(parents=True)
    (home / "snapshots" / "s1" / "junk").write_text("half made")
    stale = home / "snapshots" / ".s0.vktmp.999999999.0123abcd"  # its process is long gone
    stale.mkdir()
    snaps.create("c1", "s1")
    assert sorted(os.listdir(home / "snapshots")) == ["s1"]
    assert os.listdir(home / "snapshots" / "s1") == ["state"]


@pytest.mark.parametrize("hostile", ["../x", "x/..", "Snap", "a b", "", "-x", "s" * 64, "snap\n", "."])
def test_bad_snapshot_names_are_refused(life: Lifecycle, snaps: Snapshots, root: Path, hostile: str) -> None:
    make(life)
    snaps.create("c1", "s1")
    before = tree(root)
    for verb in (snaps.create, snaps.restore, snaps.delete, snaps.view):
        with pytest.raises(SpecError, match="invalid snapshot name"):
            verb("c1", hostile)
    assert tree(root) == before


def test_missing_instance_and_snapshot(life: Lifecycle, snaps: Snapshots) -> None:
    with pytest.raises(NotFoundError, match="instance 'nope' not found"):
        snaps.create("nope")
    with pytest.raises(NotFoundError, match="instance 'nope' not found"):
        snaps.list("nope")
    with pytest.raises(SpecError, match="invalid instance name"):
        snaps.create("../etc")
    make(life)
    for verb in (snaps.restore, snaps.delete, snaps.view):
        with pytest.raises(NotFoundError, match="snapshot 'gone' of instance 'c1' not found"):
            verb("c1", "gone")


def test_duplicates_are_refused(life: Lifecycle, snaps: Snapshots, root: Path) -> None:
    make(life)
    first = snaps.create("c1", "s1")[0]
    before = tree(root)
    with pytest.raises(ConflictError, match="already exists"):
        snaps.create("c1", "s1")
    assert tree(root) == before and snaps.get("c1", "s1") == first


def test_restore_stopped(life: Lifecycle, snaps: Snapshots, fake: FakeDriver) -> None:
    home = make(life)
    snaps.create("c1", "s1")
    (home / "state").write_text("two\n")
    fake.calls.clear()
    done = snaps.restore("c1", "s1")
    assert (done.was, done.restarted) == (InstanceState.STOPPED, False)
    assert (home / "state").read_text() == "one\n"
    assert "start" not in fake.calls and "stop_force" not in fake.calls
    assert fake.calls.index("check") < fake.calls.index("cleanup") < fake.calls.index("restore")


@pytest.mark.parametrize("paused", [False, True])
def test_restore_running_stops_restores_starts(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, paused: bool
) -> None:
    home = make(life, running=True)
    snaps.create("c1", "s1")
    if paused:
        life.pause("c1")
    (home / "state").write_text("two\n")
    fake.calls.clear()
    done = snaps.restore("c1", "s1", wait=True)
    assert done.restarted and done.was is (InstanceState.PAUSED if paused else InstanceState.RUNNING)
    order = [call for call in fake.calls if call in ("stop_force", "restore", "start", "wait_ready")]
    assert order == ["stop_force", "restore", "start", "wait_ready"]
    assert (home / "state").read_text() == "one\n"
    assert life.view("c1").status.state is InstanceState.RUNNING


def test_a_failed_restore_starts_the_instance_again(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, backend_fail: set[str]
) -> None:
    home = make(life, running=True)
    snaps.create("c1", "s1")
    (home / "state").write_text("two\n")
    backend_fail.add("restore")
    with pytest.raises(ToolError, match="fake restore failed"):
        snaps.restore("c1", "s1")
    assert life.view("c1").status.state is InstanceState.RUNNING
    assert (home / "state").read_text() == "two\n"


def test_lost_data_is_found_before_the_instance_is_touched(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver
) -> None:
    home = make(life, running=True)
    snaps.create("c1", "s1")
    snaps.create("c1", "s2")
    (home / "snapshots" / "s1" / "state").unlink()
    (home / "snapshots" / "s2").rename(home / "elsewhere")
    fake.calls.clear()
    with pytest.raises(StateError, match="lost its data"):
        snaps.restore("c1", "s1")
    with pytest.raises(StateError, match="lost its data"):
        snaps.restore("c1", "s2")
    assert "stop_force" not in fake.calls and life.view("c1").status.state is InstanceState.RUNNING
    snaps.delete("c1", "s2")  # a snapshot whose data is lost can still be deleted
    assert [s.name for s in snaps.list("c1")] == ["s1"]


def test_a_symlink_as_snapshots_dir_is_refused(life: Lifecycle, snaps: Snapshots, tmp_path: Path) -> None:
    home = make(life)
    (tmp_path / "elsewhere").mkdir()
    (home / "snapshots").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateError, match="not virtkit's snapshot directory"):
        snaps.create("c1", "s1")
    assert os.listdir(tmp_path / "elsewhere") == [] and snaps.list("c1") == []


def test_delete_removes_record_and_data(life: Lifecycle, snaps: Snapshots, fake: FakeDriver) -> None:
    home = make(life)
    snaps.create("c1", "s1")
    fake.calls.clear()
    assert snaps.delete("c1", "s1").name == "s1"
    assert "remove" in fake.calls and snaps.list("c1") == []
    assert not (home / "snapshots" / "s1").exists()


def test_deleting_the_instance_deletes_its_snapshots(
    life: Lifecycle, snaps: Snapshots, store: SqliteStore, root: Path
) -> None:
    make(life)
    make(life, "c2")
    snaps.create("c1", "s1")
    snaps.create("c2", "s1")
    life.delete("c1")
    assert store.list(SnapshotRecord, instance="c1") == []
    assert not (root / "instances" / "c1").exists()
    assert [s.key() for s in store.list(SnapshotRecord)] == [("c2", "s1")]
    make(life)  # a new c1 starts without the old one's snapshots
    assert snaps.list("c1") == []


def test_the_record_refuses_parts_outside_the_instance() -> None:
    for bad in ("../root.qcow2", "/etc/passwd", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="pattern"):
            SnapshotRecord(instance="c1", name="s1", disks=[bad])
        with pytest.raises(ValueError, match="pattern"):
            SnapshotRecord(instance="c1", name="s1", files=[bad])
    assert SnapshotRecord(instance="c1", name="s1", disks=["root.qcow2"], files=["efivars.fd"]).size == 0


def test_a_host_failure_is_said_and_undone(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make(life)

    def full(source: object, dest: object) -> None:
        raise OSError(28, "No space left on device", str(dest))

    monkeypatch.setattr(os, "rename", full)
    with pytest.raises(VirtkitError, match="snapshotting c1 failed: No space left on device"):
        snaps.create("c1", "s1")
    monkeypatch.undo()
    assert snaps.list("c1") == [] and os.listdir(home / "snapshots") == [] and "remove" in fake.calls


class FreezingDriver(FakeDriver):
    """A VM driver whose guest agent freezes (or cannot: `note` says what it did)."""

    def __init__(self, note: str) -> None:
        super().__init__(InstanceKind.VM)
        self.note = note

    @contextlib.contextmanager
    def frozen(self, record: InstanceRecord, paths: InstancePaths) -> Iterator[str]:
        self.calls.append("freeze")
        try:
            yield self.note
        finally:
            self.calls.append("thaw")


@pytest.mark.parametrize("frozen", [True, False])
def test_a_running_vm_is_snapshotted_with_its_filesystems_frozen_where_its_agent_can(
    root: Path, store: SqliteStore, life: Lifecycle, frozen: bool  # life: the tiny image is there
) -> None:
    from virtkit.drivers.qemu.fsfreeze import UNFROZEN

    note = "2 guest filesystem(s) frozen while captured" if frozen else f"{UNFROZEN}: no agent"
    driver = FreezingDriver(note)

    def backends(record: InstanceRecord, paths: InstancePaths, live: bool) -> Backend:
        backend = FakeBackend(paths.dir, driver.calls, freeze=False)  # a VM: QEMU snapshots it live
        captured = backend.capture

        def capture(name: str, into: Path) -> Captured:
            made = captured(name, into)
            return Captured(files=made.files, size=made.size, notes=("disk-only: like a power cut",))

        backend.capture = capture  # type: ignore[method-assign]
        return backend

    vms = Lifecycle(root, store, lambda kind: driver)
    snaps = Snapshots(root, store, drivers=lambda kind: driver, backends=backends)
    vms.create(Request(image="tiny", name="v1", kind=InstanceKind.VM))
    (vms.paths("v1").dir / "state").write_text("one\n")
    vms.start("v1")
    driver.calls.clear()
    _, notes = snaps.create("v1", "s1")
    assert driver.calls == ["forget", "freeze", "capture", "thaw"]  # the capture inside the freeze
    assert notes == ((f"disk-only, {note}",) if frozen else ("disk-only: like a power cut",))
    vms.stop("v1")
    driver.calls.clear()
    snaps.create("v1", "s2")
    assert "freeze" not in driver.calls  # a stopped VM: nothing to freeze
