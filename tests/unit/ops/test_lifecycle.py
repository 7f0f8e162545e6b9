"""Lifecycle verbs over the FakeDriver and a real SQLite store: states, errors, and undo on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.drivers.fake import FakeDriver
from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError, ToolError
from virtkit.images.staged import DISK, ROOTFS, StagedImage
from virtkit.model import GiB, InstanceKind, InstanceRecord, InstanceState, MiB
from virtkit.ops.images import add_staged, image_store
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.store import SqliteStore


@pytest.fixture
def life(root: Path, store: SqliteStore, fake: FakeDriver) -> Lifecycle:
    def make(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(b"disk")
        (staging / "rootfs").mkdir()
        (staging / "rootfs" / "init").write_text("init")
        return StagedImage(
            "tiny", ["vm", "container"], "x86_64", "tiny", "t", files={DISK: "disk.qcow2", ROOTFS: "rootfs"}
        )

    def vm_only(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(b"vm disk")
        return StagedImage("vmonly", ["vm"], "x86_64", "qcow2", "t", files={DISK: "disk.qcow2"})

    add_staged(root, store, make, alias="tiny")
    add_staged(root, store, vm_only, alias="vmonly")
    return Lifecycle(root, store, drivers=lambda kind: fake)


def vm(name: str = "web1", **kwargs: object) -> Request:
    return Request(image="tiny", name=name, kind=InstanceKind.VM, **kwargs)  # type: ignore[arg-type]


def test_launch_stop_start_delete(life: Lifecycle, fake: FakeDriver, root: Path) -> None:
    record, runtime = life.launch(vm(), wait=True)
    assert runtime.notices == ["fake notice"]
    view = life.view("web1")
    assert view.status.state is InstanceState.RUNNING and view.record.boot == {"spawn": 0.01, "ready": 0.02}
    assert (root / "instances" / "web1" / "runtime.json").exists()
    assert life.runtime("web1").argv[:2] == ["fake", record.uuid]
    with pytest.raises(StateError, match="already running"):
        life.start("web1")
    life.pause("web1")
    with pytest.raises(StateError, match="only a running instance can be paused"):
        life.pause("web1")
    life.resume("web1")
    life.stop("web1")
    with pytest.raises(StateError, match="already stopped"):
        life.stop("web1")
    with pytest.raises(StateError, match="only a running instance"):
        life.pause("web1")
    life.start("web1")
    with pytest.raises(StateError, match="stop it first"):
        life.delete("web1")
    life.delete("web1", force=True)
    assert "stop_force" in fake.calls
    assert not (root / "instances").exists()
    with pytest.raises(NotFoundError):
        life.view("web1")


def test_default_kind_is_container_when_the_image_allows(life: Lifecycle) -> None:
    record, _ = life.create(Request(image="tiny", name="c1"))
    assert record.kind is InstanceKind.CONTAINER
    record, _ = life.create(Request(image="vmonly", name="v1"))
    assert record.kind is InstanceKind.VM
    with pytest.raises(SpecError, match="cannot run as a container"):
        life.create(Request(image="vmonly", name="v2", kind=InstanceKind.CONTAINER))


@pytest.mark.parametrize(
    ("request_", "error", "needle"),
    [
        (Request(image="nope", name="x"), NotFoundError, "image 'nope' not found"),
        (Request(image="tiny", name="Bad_Name"), SpecError, "invalid instance name"),
        (vm(cpus=0), SpecError, "must be more than 0"),
        (vm(cpus=1.5), SpecError, "whole number of vCPUs"),
        (vm(memory=1 * MiB), SpecError, "too small"),
        (vm(memory=100000 * GiB), SpecError, "more than this host has"),
    ],
)
def test_bad_requests_create_nothing(
    life: Lifecycle, store: SqliteStore, root: Path, request_: Request, error: type[Exception], needle: str
) -> None:
    with pytest.raises(error, match=needle):
        life.launch(request_)
    assert store.list(InstanceRecord) == []
    assert not (root / "instances").exists()


def test_duplicate_name(life: Lifecycle, store: SqliteStore) -> None:
    life.create(vm())
    with pytest.raises(ConflictError, match="already exists"):
        life.create(vm())
    assert len(store.list(InstanceRecord)) == 1


@pytest.mark.parametrize("step", ["prepare", "generate", "start", "wait_ready"])
def test_failed_launch_undoes_everything(
    life: Lifecycle, fake: FakeDriver, store: SqliteStore, root: Path, step: str
) -> None:
    fake.fail_on.add(step)
    with pytest.raises(ToolError):
        life.launch(vm(), wait=True)
    assert store.list(InstanceRecord) == []
    assert not (root / "instances").exists()
    assert all(state is not InstanceState.RUNNING for state in fake.states.values())


def test_failed_start_leaves_the_instance_stopped(life: Lifecycle, fake: FakeDriver) -> None:
    life.create(vm())
    fake.fail_on.add("wait_ready")
    with pytest.raises(ToolError):
        life.start("web1", wait=True)
    view = life.view("web1")
    assert view.status.state is InstanceState.STOPPED
    assert (life.paths("web1").runtime).exists()


def test_image_in_use_cannot_be_deleted(life: Lifecycle, root: Path, store: SqliteStore) -> None:
    life.create(vm())
    with pytest.raises(ConflictError, match="used by instance web1"):
        image_store(root, store).delete("tiny")
