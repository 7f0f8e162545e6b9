"""Copies over the FakeDriver, a fake disk chain and a real SQLite store: records, identity, layer
reference counts, delete refusal, flatten, and undo when a step fails."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import own_netns
from virtkit.drivers.base import InstancePaths
from virtkit.drivers.fake import FakeDriver
from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError, ToolError
from virtkit.images.staged import DISK, ROOTFS, StagedImage
from virtkit.model import (
    ImageRecord,
    InstanceKind,
    InstanceRecord,
    InstanceState,
    NetworkRecord,
    Nic,
    SnapshotRecord,
    VolumeAttachment,
    VolumeType,
)
from virtkit.ops.copy import Copies
from virtkit.ops.images import add_staged
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.storage import layers
from virtkit.store import SqliteStore


class FakeChain:
    """A chain whose top is the FakeDriver's `disk` file and whose layers are files in ROOT/layers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fail_on: set[str] = set()

    def _step(self, name: str) -> None:
        if name in self.fail_on:
            raise ToolError(f"fake chain {name} failed")

    def _layer(self, layer: str) -> Path:
        return self.root / "layers" / f"{layer}.qcow2"

    def freeze(self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path,
               made: list[str]) -> tuple[list[str], str]:  # fmt: skip
        self._step("freeze")
        os.rename(paths.dir / "disk", self._layer(made[0]))
        (paths.dir / "disk").write_text("")
        return [made[0], *record.layers], record.base

    def empty(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> bool:
        return (paths.dir / "disk").read_text() == ""

    def unfreeze(self, record: InstanceRecord, paths: InstancePaths, frozen: list[str]) -> None:
        os.replace(self._layer(frozen[0]), paths.dir / "disk")

    def extract(self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path,
                snapshot: str | None, layer: str) -> None:  # fmt: skip
        self._step("extract")
        top = (paths.dir / "disk").read_text()
        self._layer(layer).write_text(f"snapshot {snapshot}" if snapshot else f"top {top}")

    def fill(self, source: InstanceRecord, spaths: InstancePaths, image: ImageRecord, image_dir: Path,
             snapshot: str | None, target: InstanceRecord, tpaths: InstancePaths) -> str:  # fmt: skip
        self._step("fill")
        (tpaths.dir / "disk").write_text("full:" + (spaths.dir / "disk").read_text())
        return "own"

    def linked(self, source: InstanceRecord, spaths: InstancePaths, target: InstancePaths) -> None:
        self._step("linked")

    def flatten(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> str:
        self._step("flatten")
        parts = [self._layer(layer).read_text() for layer in reversed(record.layers)]
        (paths.dir / "disk").write_text("|".join([*parts, (paths.dir / "disk").read_text()]))
        return "own"

    def identity(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> str:
        self._step("identity")
        (paths.dir / "machine-id").write_text("")
        return ""


@pytest.fixture
def chain(root: Path) -> FakeChain:
    return FakeChain(root)


@pytest.fixture(autouse=True)
def private_network() -> Iterator[None]:
    """A clone's NICs make the networks refresh the firewall for real (nft): in a namespace of
    the test's own, never the machine's."""
    with own_netns():
        yield


@pytest.fixture
def copies(root: Path, store: SqliteStore, fake: FakeDriver, chain: FakeChain) -> Copies:
    def make(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(b"disk")
        (staging / "rootfs").mkdir()
        return StagedImage("tiny", ["vm", "container"], "x86_64", "tiny", "t",
                           files={DISK: "disk.qcow2", ROOTFS: "rootfs"})  # fmt: skip

    add_staged(root, store, make, alias="tiny")
    store.create(NetworkRecord(name="lan", bridge="vkbr0", subnet="10.9.0.0/24", gateway="10.9.0.1"))
    return Copies(root, store, drivers=lambda kind: fake, chains=lambda kind: chain)


def _source(copies: Copies, name: str = "web1") -> InstanceRecord:
    record, _ = Lifecycle(copies.root, copies.store, copies.drivers).create(
        Request(image="tiny", name=name, kind=InstanceKind.VM, config={"disk_size": "1073741824"})
    )
    record.nics = [Nic(network="lan", mac="52:54:00:00:00:01", ip="10.9.0.10", device="vk00000000n0")]
    (copies.paths(name).dir / "disk").write_text("source data")
    return copies.store.put(record)


def _tree(root: Path) -> dict[str, str]:
    """Every file under root (but the store's database) with its content: what a failure must not change."""
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if not name.startswith("virtkit.db") and "locks" not in path.parts:
                found[str(path.relative_to(root))] = path.read_bytes().hex()
    return found


def test_linked_copy_freezes_the_source_and_gives_both_a_new_top(copies: Copies, root: Path) -> None:
    source = _source(copies)
    copied = copies.copy("web1", "web2")
    after = copies.store.get(InstanceRecord, "web1")
    clone = copies.store.get(InstanceRecord, "web2")
    assert copied.mode == "linked" and clone.layers == after.layers == list(copied.layers)
    (layer,) = clone.layers
    assert (root / "layers" / f"{layer}.qcow2").read_text() == "source data"
    assert (copies.paths("web1").dir / "disk").read_text() == ""
    meta = layers.read_meta(root, layer)
    assert meta is not None and meta.origin == source.uuid and meta.origin_name == "web1"
    assert (
        clone.uuid != source.uuid and clone.config == source.config and clone.state is InstanceState.STOPPED
    )
    (nic,) = clone.nics
    assert nic.network == "lan" and nic.mac != source.nics[0].mac and nic.ip != source.nics[0].ip
    assert (copies.paths("web2").dir / "machine-id").exists()
    assert json.loads(copies.paths("web2").runtime.read_text())["argv"][1] == clone.uuid


def test_a_clone_of_a_clone_stacks_layers_and_refcounts_hold(copies: Copies, root: Path) -> None:
    _source(copies)
    copies.copy("web1", "web2")
    copies.copy("web2", "web3")
    first = copies.store.get(InstanceRecord, "web1").layers
    third = copies.store.get(InstanceRecord, "web3").layers
    assert len(third) == 2 and third[1] == first[0]
    assert layers.users(copies.store, first[0]) == ["web1", "web2", "web3"]


def test_a_template_cloned_again_is_not_frozen_again(copies: Copies, root: Path) -> None:
    _source(copies)
    copies.copy("web1", "web2")
    copies.store.create(SnapshotRecord(instance="web1", name="snap0"))  # in its (empty) top: untouched
    copies.copy("web1", "web3")
    chains = [copies.store.get(InstanceRecord, name).layers for name in ("web1", "web2", "web3")]
    assert chains[0] == chains[1] == chains[2] and len(chains[0]) == 1
    assert len(os.listdir(root / "layers")) == 2  # one layer and its description


def test_full_copy_rests_on_no_layer(copies: Copies, root: Path) -> None:
    _source(copies)
    copied = copies.copy("web1", "web2", full=True)
    assert copied.mode == "full" and copied.record.layers == [] and copied.record.base == "own"
    assert (copies.paths("web2").dir / "disk").read_text() == "full:source data"
    assert copies.store.get(InstanceRecord, "web1").layers == []
    assert not (root / "layers").exists() or not os.listdir(root / "layers")


def test_copy_of_a_snapshot_leaves_the_source_running_and_untouched(
    copies: Copies, fake: FakeDriver, root: Path
) -> None:
    source = _source(copies)
    copies.store.create(SnapshotRecord(instance="web1", name="snap0"))
    fake.states[source.uuid] = InstanceState.RUNNING
    copied = copies.copy("web1", "web2", snapshot="snap0")
    assert copies.store.get(InstanceRecord, "web1").layers == []
    (layer,) = copied.record.layers
    assert (root / "layers" / f"{layer}.qcow2").read_text() == "snapshot snap0"
    assert any("snapshot snap0" in note for note in copied.notes)


def test_delete_refused_while_clones_rest_on_its_layer_then_forced(copies: Copies, root: Path) -> None:
    _source(copies)
    copies.copy("web1", "web2")
    life = Lifecycle(root, copies.store, copies.drivers)
    with pytest.raises(ConflictError, match=r"linked clones .*: web2") as caught:
        life.delete("web1")
    assert "--force" in (caught.value.hint or "") and "--flatten web2" in (caught.value.hint or "")
    life.delete("web1", force=True)
    (layer,) = copies.store.get(InstanceRecord, "web2").layers
    assert (root / "layers" / f"{layer}.qcow2").exists()  # kept for the clone
    life.delete("web2")
    assert not (root / "layers").exists()  # no user left: removed


def test_flatten_drops_the_layers_and_unused_ones_go(copies: Copies, root: Path) -> None:
    _source(copies)
    copies.copy("web1", "web2")
    (copies.paths("web2").dir / "disk").write_text("clone data")
    Lifecycle(root, copies.store, copies.drivers).delete("web1", force=True)
    record = copies.flatten("web2")
    assert record.layers == [] and record.base == "own"
    assert (copies.paths("web2").dir / "disk").read_text() == "source data|clone data"
    assert not (root / "layers").exists()
    with pytest.raises(StateError, match="nothing to flatten"):
        copies.flatten("web2")


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("nope", "web2"), NotFoundError, "nope"),
        (("web1", "web1"), ConflictError, "onto itself"),
        (("web1", "Bad_Name"), SpecError, "new instance name"),
        (("web1", "other"), ConflictError, "already exists"),
    ],
)
def test_bad_input_changes_nothing(
    copies: Copies, root: Path, args: tuple[str, str], error: type[Exception], match: str
) -> None:
    _source(copies)
    _source(copies, "other")
    records, files = copies.store.list(InstanceRecord), _tree(root)
    with pytest.raises(error, match=match):
        copies.copy(*args)
    assert copies.store.list(InstanceRecord) == records and _tree(root) == files


def test_running_source_and_missing_snapshot_are_refused(
    copies: Copies, fake: FakeDriver, root: Path
) -> None:
    source = _source(copies)
    files = _tree(root)
    with pytest.raises(NotFoundError, match="snapshot"):
        copies.copy("web1", "web2", snapshot="gone")
    fake.states[source.uuid] = InstanceState.RUNNING
    with pytest.raises(StateError, match="running: it can be copied only stopped") as caught:
        copies.copy("web1", "web2")
    assert "--snapshot" in (caught.value.hint or "")
    assert _tree(root) == files and copies.store.find(InstanceRecord, "web2") is None


def test_a_source_with_snapshots_is_not_frozen_its_top_is_copied(copies: Copies, root: Path) -> None:
    _source(copies)
    copies.store.create(SnapshotRecord(instance="web1", name="snap0"))
    copied = copies.copy("web1", "web2")
    assert copied.mode == "linked"
    source = copies.store.get(InstanceRecord, "web1")
    assert source.layers == [] and (copies.paths("web1").dir / "disk").read_text() == "source data"
    (layer,) = copied.record.layers
    assert (root / "layers" / f"{layer}.qcow2").read_text() == "top source data"
    assert any("has snapshots (snap0)" in note and "keeps them" in note for note in copied.notes)
    assert copies.store.list(SnapshotRecord, instance="web2") == []


def test_a_failed_copy_of_a_source_with_snapshots_leaves_no_layer(
    copies: Copies, chain: FakeChain, root: Path
) -> None:
    _source(copies)
    copies.store.create(SnapshotRecord(instance="web1", name="snap0"))
    files = _tree(root)
    chain.fail_on.add("identity")
    with pytest.raises(ToolError):
        copies.copy("web1", "web2")
    assert copies.store.find(InstanceRecord, "web2") is None and _tree(root) == files


@pytest.mark.parametrize("step", ["freeze", "linked", "identity", "prepare", "generate"])
def test_a_failed_linked_copy_is_undone(
    copies: Copies, chain: FakeChain, fake: FakeDriver, root: Path, step: str
) -> None:
    before = _source(copies)
    files = _tree(root)
    (chain.fail_on if step in ("freeze", "linked", "identity") else fake.fail_on).add(step)
    with pytest.raises(ToolError):
        copies.copy("web1", "web2")
    assert copies.store.find(InstanceRecord, "web2") is None
    after = copies.store.get(InstanceRecord, "web1")
    assert after.layers == [] and after.uuid == before.uuid
    assert _tree(root) == files


def test_volumes_stay_with_the_source(copies: Copies) -> None:
    source = _source(copies)
    source.volumes = [VolumeAttachment(pool="default", name="data", type=VolumeType.BLOCK, format="qcow2",
                                       source="/srv/data.qcow2", device="vol0")]  # fmt: skip
    copies.store.put(source)
    copied = copies.copy("web1", "web2", full=True)
    assert copied.record.volumes == [] and any("default/data" in note for note in copied.notes)
