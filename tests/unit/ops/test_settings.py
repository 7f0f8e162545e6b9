"""`set` over the FakeDriver and a real SQLite store: parsing, checks before any change, live update
of a running instance, the saved runtime regenerated, nothing changed on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.drivers.fake import FakeDriver
from virtkit.errors import SpecError, ToolError
from virtkit.images.staged import DISK, StagedImage
from virtkit.model import InstanceKind, InstanceRecord, MiB
from virtkit.ops.images import add_staged
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.ops.settings import Settings, parse_assignments
from virtkit.store import SqliteStore


@pytest.fixture
def life(root: Path, store: SqliteStore, fake: FakeDriver) -> Lifecycle:
    def make(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(b"disk")
        return StagedImage("vmonly", ["vm"], "x86_64", "qcow2", "t", files={DISK: "disk.qcow2"})

    add_staged(root, store, make, alias="vmonly")
    return Lifecycle(root, store, drivers=lambda kind: fake)


@pytest.fixture
def settings(root: Path, store: SqliteStore, fake: FakeDriver) -> Settings:
    return Settings(root, store, drivers=lambda kind: fake)


def test_parse_assignments() -> None:
    assert parse_assignments(["memory=512MiB", "cpu.allowance="]) == {"memory": "512MiB", "cpu.allowance": ""}
    for words, needle in (
        ([], "nothing to set"),
        (["memory"], "expected KEY=VALUE"),
        (["colour=blue"], "unknown setting 'colour'"),
        (["cpus=1", "cpus=2"], "given twice"),
    ):
        with pytest.raises(SpecError, match=needle):
            parse_assignments(words)


def test_a_stopped_instance_changes_at_its_next_start(
    life: Lifecycle, settings: Settings, fake: FakeDriver
) -> None:
    life.create(Request(image="vmonly", name="web1", kind=InstanceKind.VM))
    record, live = settings.set("web1", {"memory": "512MiB", "cpus": "2", "cpu.allowance": "50%"})
    assert not live and "update" not in fake.calls
    assert (record.memory, record.cpus, record.config["cpu_allowance"]) == (512 * MiB, 2, "50%")
    argv = life.runtime("web1").argv
    assert f"memory={512 * MiB}" in argv and "cpus=2" in argv and "cpu_allowance=50%" in argv
    record, _ = settings.set("web1", {"cpu.allowance": ""})
    assert "cpu_allowance" not in record.config
    assert "cpu_allowance=50%" not in life.runtime("web1").argv


def test_a_running_instance_is_updated_live(life: Lifecycle, settings: Settings, fake: FakeDriver) -> None:
    record, _ = life.launch(Request(image="vmonly", name="web1", kind=InstanceKind.VM))
    changed, live = settings.set("web1", {"memory": "128MiB"})
    assert live and fake.updated[record.uuid].argv == life.runtime("web1").argv
    assert changed.memory == 128 * MiB


def test_nothing_changes_when_a_value_or_the_live_update_fails(
    life: Lifecycle, settings: Settings, fake: FakeDriver, store: SqliteStore
) -> None:
    life.launch(Request(image="vmonly", name="web1", kind=InstanceKind.VM))
    before, runtime = store.get(InstanceRecord, "web1"), life.runtime("web1")
    for bad, needle in (
        ({"memory": "lots"}, "invalid memory size"),
        ({"memory": ""}, "memory needs a value"),
        ({"cpus": "1.5"}, "whole number"),
        ({"cpus": "inf"}, "CPU count"),
        ({"cpus": "0"}, "CPU count"),
        ({"memory": "1MiB"}, "too small"),
    ):
        with pytest.raises(SpecError, match=needle):
            settings.set("web1", bad)
    fake.fail_on.add("update")
    with pytest.raises(ToolError, match="fake update failed"):
        settings.set("web1", {"memory": "128MiB"})
    fake.fail_on = {"generate"}
    with pytest.raises(ToolError, match="fake generate failed"):
        settings.set("web1", {"memory": "128MiB"})
    assert "update" not in fake.calls[-1:]  # generate failed first: the live VM was not touched
    after = store.get(InstanceRecord, "web1")
    assert (after.memory, after.cpus, after.config) == (before.memory, before.cpus, before.config)
    assert life.runtime("web1") == runtime
