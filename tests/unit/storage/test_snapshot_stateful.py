"""Stateful snapshots in the ops layer, over the FakeDriver and a fake backend whose `ram` file
stands for a VM's memory: refused for containers and stopped VMs before anything is made; restored
into the running instance (no stop, no boot) or, when files must be put back or it is stopped, by
a start with the vCPUs stopped (-S) then a load; a failed load stops it and says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.storage.test_snapshot_ops import FakeBackend, tree
from virtkit.drivers.base import InstancePaths, Plugged, Runtime
from virtkit.drivers.fake import FakeDriver
from virtkit.errors import StateError, VirtkitError
from virtkit.model import InstanceKind, InstanceRecord, InstanceState
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.ops.snapshots import Snapshots
from virtkit.storage.snapshots import Backend
from virtkit.store import SqliteStore


class ArgvDriver(FakeDriver):
    """The FakeDriver, noting the last word of each start's command line."""

    def start(
        self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths, plugged: Plugged = None
    ) -> None:
        self.calls.append(f"argv ends {runtime.argv[-1]}")
        super().start(record, runtime, paths, plugged)


@pytest.fixture
def fake() -> ArgvDriver:
    return ArgvDriver(InstanceKind.VM)


@pytest.fixture
def state_files() -> list[str]:
    return []


@pytest.fixture
def fail_on() -> set[str]:
    return set()


@pytest.fixture
def snaps(
    root: Path, store: SqliteStore, fake: FakeDriver, state_files: list[str], fail_on: set[str]
) -> Snapshots:
    def backends(record: InstanceRecord, paths: InstancePaths, live: bool) -> Backend:
        fake.calls.append(f"backend live={live}")
        return FakeBackend(paths.dir, fake.calls, fail_on, freeze=False, state_files=tuple(state_files))

    return Snapshots(root, store, drivers=lambda kind: fake, backends=backends)


def make_vm(life: Lifecycle, name: str = "v1", *, kind: InstanceKind = InstanceKind.VM) -> Path:
    life.create(Request(image="tiny", name=name, kind=kind))
    home = life.paths(name).dir
    (home / "state").write_text("disk one\n")
    (home / "ram").write_text("counter=14\n")
    life.start(name)
    return home


def test_a_running_vm_is_snapshotted_with_its_memory(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver
) -> None:
    home = make_vm(life)
    fake.calls.clear()
    record, notes = snaps.create("v1", "s1", stateful=True)
    assert (record.stateful, record.live, record.size, notes) == (True, True, 7, ())
    assert fake.calls == ["backend live=True", "forget", "capture_state"]  # QEMU pauses it itself
    assert (home / "snapshots" / "s1" / "ram").read_text() == "counter=14\n"
    assert snaps.view("v1", "s1").to_dict()["stateful"] is True


@pytest.mark.parametrize("paused", [False, True])
def test_restore_into_the_running_vm_resumes_it(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, paused: bool
) -> None:
    home = make_vm(life)
    snaps.create("v1", "s1", stateful=True)
    (home / "ram").write_text("counter=30\n")
    (home / "state").write_text("disk two\n")
    if paused:
        life.pause("v1")
    fake.calls.clear()
    done = snaps.restore("v1", "s1", wait=True)  # nothing to wait for: it runs on from the snapshot
    assert (done.resumed, done.restarted) == (True, False)
    assert done.was is (InstanceState.PAUSED if paused else InstanceState.RUNNING)
    assert fake.calls == ["backend live=True", "check", "load_state"]  # not stopped, not booted
    assert (home / "ram").read_text() == "counter=14\n" and (home / "state").read_text() == "disk one\n"
    assert life.view("v1").record.state is InstanceState.RUNNING


def test_a_stopped_vm_is_started_paused_then_loaded(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver
) -> None:
    home = make_vm(life)
    snaps.create("v1", "s1", stateful=True)
    life.stop("v1")
    (home / "ram").write_text("")
    fake.calls.clear()
    done = snaps.restore("v1", "s1", wait=True)
    assert (done.was, done.resumed, done.restarted) == (InstanceState.STOPPED, True, False)
    order = [
        c for c in fake.calls if c.split()[0] in ("stop_force", "restore", "argv", "start", "load_state")
    ]
    assert order == ["restore", "argv ends -S", "start", "load_state"]
    assert "wait_ready" not in fake.calls  # the guest does not boot: there is no readiness to wait for
    assert (home / "ram").read_text() == "counter=14\n"
    assert life.view("v1").status.state is InstanceState.RUNNING
    assert life.runtime("v1").argv[-1] != "-S"  # the saved command line is left as it was


def test_copied_files_make_a_running_vm_restart(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, state_files: list[str]
) -> None:
    state_files.append("state")  # e.g. its UEFI variables: QEMU has them open, they cannot be swapped
    home = make_vm(life)
    snaps.create("v1", "s1", stateful=True)
    (home / "ram").write_text("counter=30\n")
    fake.calls.clear()
    done = snaps.restore("v1", "s1")
    assert (done.was, done.resumed, done.restarted) == (InstanceState.RUNNING, True, True)
    order = [c for c in fake.calls if c.split()[0] in ("stop_force", "restore", "argv", "load_state")]
    assert order == ["stop_force", "restore", "argv ends -S", "load_state"]
    assert (home / "ram").read_text() == "counter=14\n"


@pytest.mark.parametrize("running", [True, False])
def test_a_failed_load_stops_the_vm_and_says_so(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, fail_on: set[str], running: bool
) -> None:
    make_vm(life)
    snaps.create("v1", "s1", stateful=True)
    if not running:
        life.stop("v1")
    fail_on.add("load_state")
    with pytest.raises(
        VirtkitError, match="memory state of snapshot s1 into v1 failed: fake load_state"
    ) as err:
        snaps.restore("v1", "s1")
    assert "so v1 was stopped" in str(err.value) and "virtkit start v1" in (err.value.hint or "")
    assert life.view("v1").status.state is InstanceState.STOPPED


def test_a_stopped_vm_cannot_take_a_stateful_snapshot(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, root: Path
) -> None:
    make_vm(life)
    life.stop("v1")
    before = tree(root)
    fake.calls.clear()
    with pytest.raises(StateError, match="saves the memory of a running VM, and 'v1' is stopped") as err:
        snaps.create("v1", "s1", stateful=True)
    assert err.value.hint == "take it without --stateful: virtkit snapshot create v1"
    assert fake.calls == [] and tree(root) == before and snaps.list("v1") == []


def test_containers_cannot_take_stateful_snapshots(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, root: Path
) -> None:
    make_vm(life, "c1", kind=InstanceKind.CONTAINER)
    before = tree(root)
    fake.calls.clear()
    with pytest.raises(StateError, match=r"containers are not supported.*CRIU") as err:
        snaps.create("c1", "s1", stateful=True)
    assert "without --stateful" in (err.value.hint or "")
    assert fake.calls == [] and tree(root) == before  # not even frozen


def test_a_failed_stateful_capture_leaves_nothing(
    life: Lifecycle, snaps: Snapshots, fake: FakeDriver, fail_on: set[str], root: Path
) -> None:
    make_vm(life)
    before = tree(root)
    fail_on.add("capture_state")
    with pytest.raises(VirtkitError, match="fake capture_state failed"):
        snaps.create("v1", "s1", stateful=True)
    assert snaps.list("v1") == [] and sorted(set(tree(root)) - {"instances/v1/snapshots"}) == before
    assert life.view("v1").status.state is InstanceState.RUNNING


def test_expiry_and_clock(root: Path, store: SqliteStore, fake: FakeDriver, life: Lifecycle) -> None:
    make_vm(life)
    backends = lambda record, paths, live: FakeBackend(paths.dir, fake.calls)  # noqa: E731
    snaps = Snapshots(root, store, drivers=lambda kind: fake, backends=backends, now=lambda: 1_000_000.0)
    record, _ = snaps.create("v1", "s1", expiry=3600)
    assert (record.created_at, record.expires_at, record.scheduled) == (1_000_000.0, 1_003_600.0, False)
    assert snaps.create("v1", "s2")[0].expires_at is None
