"""Cold moves (ops/movecold.py) over the FakeDriver, a real SQLite store and a fake destination:
the steps, their undo on every failure, the journal a rerun reads, the checks made before anything
changes, and the file read while it grows."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from virtkit.drivers.base import InstancePaths
from virtkit.drivers.fake import FakeDriver
from virtkit.errors import ConflictError, NotFoundError, RemoteError, SpecError, StateError, VirtkitError
from virtkit.images.staged import DISK, ROOTFS, StagedImage
from virtkit.model import InstanceKind, InstanceRecord, InstanceState, Nic, VolumeAttachment, VolumeType
from virtkit.ops.images import add_staged
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.ops.movecold import JOURNAL, ColdMove
from virtkit.ops.movedest import Growing, Readable
from virtkit.store import SqliteStore


class FakeDestination:
    """Another host: instances by name; `fail` names the steps that raise."""

    def __init__(self) -> None:
        self.there: dict[str, dict[str, Any]] = {}
        self.fail: set[str] = set()
        self.uploads: list[dict[str, Any]] = []
        self.running_imports: list[str] = []
        self.subnets = {"lan": "10.9.0.0/24"}
        self.never_runs = False

    def _step(self, name: str) -> None:
        if name in self.fail:
            raise RemoteError(f"fake destination: {name} failed")

    def instances(self) -> list[dict[str, Any]]:
        self._step("instances")
        return [dict(i) for i in self.there.values()]

    def networks(self) -> dict[str, str]:
        return dict(self.subnets)

    def pools(self) -> set[str]:
        return {"default"}

    def upload(self, source: Readable, name: str, *, identity: bool, nics: list[str],
               incremental: bool = False) -> dict[str, Any]:  # fmt: skip
        data = source.read(-1)
        self.uploads.append({"name": name, "identity": identity, "nics": nics, "data": data})
        self._step("upload")
        record = {"name": name, "uuid": "same" if identity else "new", "state": "stopped",
                  "nics": [{"network": n.split(",")[0]} for n in nics]}  # fmt: skip
        self.there[name] = record
        return {"instance": record, "notes": []}

    def start(self, name: str) -> None:
        self._step("start")
        self.there[name]["state"] = "error" if self.never_runs else "running"

    def state(self, name: str) -> str | None:
        return str(self.there[name]["state"]) if name in self.there else None

    def delete(self, name: str) -> None:
        self._step("delete")
        self.there.pop(name, None)

    def imports(self, name: str) -> list[str]:
        return list(self.running_imports)

    def wait(self, operation: str, timeout: float) -> None:
        self.running_imports.remove(operation)

    def restore(self, name: str, snapshot: str) -> None:
        self._step("restore")

    def forget_snapshots(self, name: str) -> None:
        return None

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        self._step("delete_snapshot")


class Streamless(ColdMove):
    """The archive stands for itself: what these tests look at is around the stream."""

    def _stream(self, name: str, as_name: str, *, identity: bool, nics: list[str],
                instance_only: bool = False, since: str | None = None,
                ) -> tuple[dict[str, Any], int]:  # fmt: skip
        if identity:  # the destination's copy carries the source's UUID, as an identity import does
            uuid = self.store.get(InstanceRecord, name).uuid
            done = self.dest.upload(io.BytesIO(b"archive"), as_name, identity=True, nics=nics)
            self.dest.there[as_name]["uuid"] = uuid  # type: ignore[attr-defined]
            return done, 7
        return self.dest.upload(io.BytesIO(b"archive"), as_name, identity=False, nics=nics), 7


@pytest.fixture
def dest() -> FakeDestination:
    return FakeDestination()


@pytest.fixture
def mover(root: Path, store: SqliteStore, fake: FakeDriver, dest: FakeDestination) -> Streamless:
    def make(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(b"disk")
        (staging / "rootfs").mkdir()
        return StagedImage("tiny", ["vm", "container"], "x86_64", "tiny", "t",
                           files={DISK: "disk.qcow2", ROOTFS: "rootfs"})  # fmt: skip

    add_staged(root, store, make, alias="tiny")
    return Streamless(root, store, dest, "b", drivers=lambda kind: fake)


def _instance(mover: ColdMove, name: str = "web1", *, running: bool = True) -> InstanceRecord:
    lifecycle = Lifecycle(mover.root, mover.store, mover.drivers)
    lifecycle.create(Request(image="tiny", name=name, kind=InstanceKind.VM))
    if running:
        lifecycle.start(name)
    return mover.store.get(InstanceRecord, name)


def _state(mover: ColdMove, name: str) -> InstanceState:
    record = mover.store.get(InstanceRecord, name)
    return mover.drivers(record.kind).status(record, InstancePaths.of(mover.root, name)).state


def _journal(mover: ColdMove, name: str) -> Path:
    return InstancePaths.of(mover.root, name).dir / JOURNAL


def test_a_running_instance_moves_and_is_removed_here_once_it_runs_there(
    mover: Streamless, dest: FakeDestination, fake: FakeDriver
) -> None:
    source = _instance(mover)
    moved = mover.move("web1")
    assert dest.there["web1"]["state"] == "running" and dest.there["web1"]["uuid"] == source.uuid
    assert dest.uploads[0]["identity"] is True and moved.bytes == 7
    assert moved.was_running and moved.downtime_s is not None and moved.total_s >= moved.downtime_s
    assert mover.store.find(InstanceRecord, "web1") is None
    assert not InstancePaths.of(mover.root, "web1").dir.exists()
    assert "stop" in fake.calls  # a clean shutdown first, not a kill


def test_a_stopped_instance_arrives_stopped(mover: Streamless, dest: FakeDestination) -> None:
    _instance(mover, running=False)
    moved = mover.move("web1")
    assert dest.there["web1"]["state"] == "stopped" and moved.downtime_s is None and not moved.was_running
    assert mover.store.find(InstanceRecord, "web1") is None


@pytest.mark.parametrize("step", ["upload", "start", "never-runs"])
def test_a_failure_before_the_destination_runs_it_undoes_everything(
    mover: Streamless, dest: FakeDestination, step: str
) -> None:
    _instance(mover)
    if step == "never-runs":
        dest.never_runs = True
    else:
        dest.fail.add(step)
    with pytest.raises(VirtkitError):
        mover.move("web1")
    assert dest.there == {}
    assert _state(mover, "web1") is InstanceState.RUNNING and not _journal(mover, "web1").exists()


def test_an_unreachable_destination_during_the_undo_still_starts_the_source(
    mover: Streamless, dest: FakeDestination
) -> None:
    _instance(mover)
    dest.fail |= {"start", "delete"}
    with pytest.raises(RemoteError, match="start failed"):
        mover.move("web1")
    assert _state(mover, "web1") is InstanceState.RUNNING and not _journal(mover, "web1").exists()


def _killed_at(mover: ColdMove, name: str, phase: str, *, was_running: bool = True) -> None:
    """What a move killed in `phase` leaves here: the journal, the instance stopped."""
    record = mover.store.get(InstanceRecord, name)
    Lifecycle(mover.root, mover.store, mover.drivers).stop(name)
    _journal(mover, name).write_text(
        json.dumps({"phase": phase, "uuid": record.uuid, "was_running": was_running})
    )


def test_a_rerun_after_a_kill_during_the_transfer_puts_back_then_moves(
    mover: Streamless, dest: FakeDestination
) -> None:
    _instance(mover)
    _killed_at(mover, "web1", "transfer")
    moved = mover.move("web1")
    assert moved.recovered == "resumed" and dest.there["web1"]["state"] == "running"
    assert mover.store.find(InstanceRecord, "web1") is None


def test_a_rerun_after_a_kill_once_the_import_ended_completes_the_move(
    mover: Streamless, dest: FakeDestination
) -> None:
    source = _instance(mover)
    _killed_at(mover, "web1", "starting")
    dest.there["web1"] = {"name": "web1", "uuid": source.uuid, "state": "stopped", "nics": []}
    moved = mover.move("web1")
    assert moved.recovered == "moved" and dest.there["web1"]["state"] == "running"
    assert dest.uploads == [] and mover.store.find(InstanceRecord, "web1") is None


def test_a_rerun_waits_for_an_import_still_running_there(mover: Streamless, dest: FakeDestination) -> None:
    source = _instance(mover)
    _killed_at(mover, "web1", "transfer")
    dest.there["web1"] = {"name": "web1", "uuid": source.uuid, "state": "stopped", "nics": []}
    dest.running_imports = ["op1"]
    assert mover.recover("web1") == "moved"
    assert dest.running_imports == [] and dest.there["web1"]["state"] == "running"


def test_a_rerun_never_deletes_another_instance_of_the_same_name_there(
    mover: Streamless, dest: FakeDestination
) -> None:
    _instance(mover)
    _killed_at(mover, "web1", "transfer")
    dest.there["web1"] = {"name": "web1", "uuid": "someone-else", "state": "running", "nics": []}
    assert mover.recover("web1") == "resumed"
    assert dest.there["web1"]["uuid"] == "someone-else" and _state(mover, "web1") is InstanceState.RUNNING
    with pytest.raises(ConflictError, match="exists on b already"):
        mover.move("web1")


def _with_nic(mover: ColdMove, ip: str = "10.9.0.10", network: str = "lan") -> InstanceRecord:
    record = _instance(mover, running=False)
    record.nics = [Nic(network=network, mac="52:54:00:00:00:01", ip=ip, device="vk00000000n0")]
    return mover.store.put(record)


def test_the_plan_keeps_mac_and_a_free_address_and_maps_networks(
    mover: Streamless, dest: FakeDestination
) -> None:
    record = _with_nic(mover)
    assert mover._check(record, {}, None).nics == ["lan,mac=52:54:00:00:00:01,ip=10.9.0.10"]
    dest.there["other"] = {"name": "other", "uuid": "u", "nics": [{"network": "lan", "ip": "10.9.0.10"}]}
    plan = mover._check(record, {}, None)
    assert plan.nics == ["lan,mac=52:54:00:00:00:01"] and "not free" in plan.notes[0]
    dest.subnets["lan2"] = "10.10.0.0/24"
    assert mover._check(record, {"lan": "lan2"}, None).nics == ["lan2,mac=52:54:00:00:00:01"]
    assert mover._check(record, {"*": "lan2"}, None).nics == ["lan2,mac=52:54:00:00:00:01"]


@pytest.mark.parametrize(("networks", "pool", "error", "said"), [
    ({"lan": "nowhere"}, None, NotFoundError, "network 'nowhere'"),
    ({"wan": "lan"}, None, SpecError, "no NIC on network 'wan'"),
    ({}, "nopool", NotFoundError, "pool 'nopool'"),
])  # fmt: skip
def test_bad_plans_are_refused_before_anything_changes(
    mover: Streamless, dest: FakeDestination, networks: dict[str, str], pool: str | None,
    error: type[Exception], said: str,
) -> None:  # fmt: skip
    _with_nic(mover)
    with pytest.raises(error, match=said):
        mover.move("web1", networks=networks, pool=pool)
    assert dest.uploads == [] and mover.store.find(InstanceRecord, "web1") is not None
    assert not _journal(mover, "web1").exists()


def test_a_missing_network_there_and_a_taken_uuid_are_refused(
    mover: Streamless, dest: FakeDestination
) -> None:
    record = _with_nic(mover, network="only-here")
    with pytest.raises(NotFoundError, match="network 'only-here'"):
        mover.move("web1")
    dest.there["twin"] = {"name": "twin", "uuid": record.uuid, "nics": []}
    with pytest.raises(ConflictError, match="has the UUID"):
        mover.move("web1")
    dest.subnets["only-here"] = "10.7.0.0/24"
    dest.there["twin"] = {"name": "twin", "uuid": "u", "nics": [{"mac": record.nics[0].mac}]}
    with pytest.raises(ConflictError, match="MAC 52:54:00:00:00:01"):
        mover.move("web1")
    assert dest.uploads == []


def test_instances_with_volumes_or_paused_are_refused(mover: Streamless, fake: FakeDriver) -> None:
    record = _instance(mover, running=False)
    record.volumes = [VolumeAttachment(pool="default", name="v", type=VolumeType.BLOCK, format="qcow2",
                                       source="/srv/v.qcow2", device="vol0")]  # fmt: skip
    mover.store.put(record)
    with pytest.raises(SpecError, match="volumes"):
        mover.move("web1")
    _instance(mover, "web2")
    fake.states[mover.store.get(InstanceRecord, "web2").uuid] = InstanceState.PAUSED
    with pytest.raises(StateError, match="paused"):
        mover.move("web2")
    with pytest.raises(NotFoundError):
        mover.move("nope")


def test_a_copy_makes_a_new_instance_there_and_leaves_the_source(
    mover: Streamless, dest: FakeDestination
) -> None:
    _instance(mover)
    copied = mover.copy("web1", "web9")
    assert dest.there["web9"]["uuid"] == "new" and dest.uploads[0]["identity"] is False
    assert _state(mover, "web1") is InstanceState.RUNNING and copied.bytes == 7
    with pytest.raises(ConflictError):
        mover.copy("web1", "web9")
    with pytest.raises(NotFoundError):
        mover.copy("web1", "web8", snapshot="nosnap")


def test_the_growing_file_is_read_as_it_is_written_and_to_its_end(tmp_path: Path) -> None:
    growing = Growing(tmp_path)
    chunks = [bytes([n]) * 70_000 for n in range(20)]

    def write() -> None:
        partial = tmp_path / ".a.tar.zst~1.x"
        with open(partial, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
                file.flush()
                time.sleep(0.005)
        partial.rename(tmp_path / "a.tar.zst")
        growing.written.set()

    writer = threading.Thread(target=write)
    writer.start()
    read = b"".join(iter(lambda: growing.read(65536), b""))
    writer.join()
    growing.close()
    assert read == b"".join(chunks) and growing.sent == len(read)


def test_the_growing_file_ends_in_the_exports_error(tmp_path: Path) -> None:
    growing = Growing(tmp_path)
    (tmp_path / "part").write_bytes(b"x" * 10)
    growing.error = StateError("the export failed")
    growing.written.set()
    assert growing.read(100) == b"x" * 10
    with pytest.raises(StateError, match="export failed"):
        growing.read(100)
    growing.close()
