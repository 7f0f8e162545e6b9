"""Attaching volumes (ops/volumes.py) over a FakeDriver and a real store: what goes where, what is
refused, and every refusal or failure leaving both records and the saved runtime as they were."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.drivers.base import InstancePaths, Runtime
from virtkit.drivers.fake import FakeDriver
from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError, ToolError
from virtkit.model import (
    ImageRecord,
    InstanceKind,
    InstanceRecord,
    InstanceState,
    VolumeAttachment,
    VolumeRecord,
    VolumeType,
)
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.ops.storage import Storage
from virtkit.ops.volumes import MAX_VOLUMES, Volumes, mount_path
from virtkit.store import SqliteStore


class VolumeFake(FakeDriver):
    """The FakeDriver, with volumes: they show in its argv (a VM's as QEMU's ids would), and mounting
    into a running instance is recorded (or made to fail)."""

    def __init__(self) -> None:
        super().__init__()
        self.attached: list[tuple[str, str, bool]] = []  # (instance, device, live)
        self.detached: list[tuple[str, str]] = []
        self.vm_consumes = True

    def generate(
        self, record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
    ) -> Runtime:
        runtime = super().generate(record, image, image_dir, paths)
        shown = [
            f"vk-{v.device}" if record.kind is InstanceKind.VM else f"{v.source}:{v.path}"
            for v in record.volumes
            if record.kind is InstanceKind.CONTAINER or self.vm_consumes
        ]
        return Runtime(runtime.kind, [*runtime.argv, *shown], notices=runtime.notices)

    def attach_volume(
        self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment, *, live: bool
    ) -> None:
        self._step("attach_volume_live" if live else "attach_volume_check")
        self.attached.append((record.name, volume.device, live))

    def detach_volume(self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment) -> None:
        self._step("detach_volume")
        self.detached.append((record.name, volume.device))


@pytest.fixture
def fake() -> VolumeFake:
    return VolumeFake()


@pytest.fixture
def verbs(root: Path, store: SqliteStore, fake: VolumeFake, life: Lifecycle) -> Volumes:
    storage = Storage(root, store)
    storage.create_volume("default", "data", type="filesystem")
    storage.create_volume("default", "logs", type="filesystem")
    store.create(VolumeRecord(pool="default", name="disk", size=1 << 30, config={"limits.read_iops": "500"}))
    life.create(Request(image="tiny", name="c1", kind=InstanceKind.CONTAINER))
    life.create(Request(image="tiny", name="c2", kind=InstanceKind.CONTAINER))
    life.create(Request(image="tiny", name="v1", kind=InstanceKind.VM))
    return Volumes(root, store, drivers=lambda kind: fake)


def state(verbs: Volumes) -> tuple[object, ...]:
    """Everything an attach or detach may change: both kinds of record and the saved runtimes."""
    instances = [(r.name, r.volumes) for r in verbs.store.list(InstanceRecord)]
    volumes = [(v.pool, v.name, v.attached_to) for v in verbs.store.list(VolumeRecord)]
    runtimes = [verbs.life.paths(n).runtime.read_bytes() for n in ("c1", "c2", "v1")]
    return instances, volumes, runtimes


def attached_to(verbs: Volumes, name: str) -> str | None:
    return verbs.store.get(VolumeRecord, "default", name).attached_to


def test_paths_are_absolute_plain_and_not_the_kernels() -> None:
    assert mount_path("/mnt//data/") == "/mnt/data" and mount_path("/srv/www") == "/srv/www"
    assert mount_path("/proc-data") == "/proc-data" and mount_path("/devices") == "/devices"
    for bad, words in [(None, "needs a path"), ("", "needs a path"), ("mnt/data", "must be absolute"),
                       ("./data", "must be absolute"), ("/", "root"), ("//", "root"),
                       ("/mnt/../etc", "'..'"), ("/mnt/./x", "'.'"), ("/proc", "kernel"),
                       ("/proc/sys/x", "kernel"), ("/sys", "kernel"), ("/dev/shm", "kernel"),
                       ("/mnt/\n", "control"), ("/" + "x" * 1100, "over 1024")]:  # fmt: skip
        with pytest.raises(SpecError, match=words):
            mount_path(bad)


def test_a_stopped_container_gets_the_volume_at_its_next_start(verbs: Volumes, fake: VolumeFake) -> None:
    done = verbs.attach("default", "data", "c1", "/mnt//data/")
    assert (done.instance, done.live, done.notices) == ("c1", False, [])
    expected = VolumeAttachment(
        pool="default", name="data", type=VolumeType.FILESYSTEM, format="dir", device="vol0",
        source=str(verbs.storage.path_of(verbs.storage.volume("default", "data"))), path="/mnt/data",
    )  # fmt: skip
    assert done.volume == expected
    assert verbs.store.get(InstanceRecord, "c1").volumes == [expected]
    assert attached_to(verbs, "data") == "c1"
    assert f"{expected.source}:/mnt/data" in verbs.life.runtime("c1").argv
    assert fake.attached == [("c1", "vol0", False)]  # checked, not mounted
    view = verbs.storage.volume_view("default", "data")
    assert view.attachment == expected and view.to_dict()["attached_path"] == "/mnt/data"

    second = verbs.attach("default", "logs", "c1", path="/var/log/app")
    assert second.volume.device == "vol1"
    for verb in (lambda: verbs.storage.delete_volume("default", "data"),
                 lambda: verbs.storage.resize_volume("default", "data", "20GiB")):  # fmt: skip
        with pytest.raises(StateError, match="attached to c1"):
            verb()

    verbs.detach("default", "data", "c1")
    assert [a.name for a in verbs.store.get(InstanceRecord, "c1").volumes] == ["logs"]
    assert attached_to(verbs, "data") is None and fake.detached == []
    assert f"{expected.source}:/mnt/data" not in verbs.life.runtime("c1").argv
    assert verbs.attach("default", "data", "c1", "/data").volume.device == "vol0"  # the free slot again


def test_a_running_container_gets_it_at_once(verbs: Volumes, fake: VolumeFake, life: Lifecycle) -> None:
    life.start("c1")
    done = verbs.attach("default", "data", "c1", "/mnt/data")
    assert done.live and fake.attached == [("c1", "vol0", False), ("c1", "vol0", True)]
    life.pause("c1")  # frozen, but its mount namespace is there
    assert verbs.detach("default", "data", "c1").live and fake.detached == [("c1", "vol0")]
    assert attached_to(verbs, "data") is None


@pytest.mark.parametrize("step", ["attach_volume_check", "attach_volume_live", "generate"])
def test_a_failed_attach_changes_nothing(
    verbs: Volumes, fake: VolumeFake, life: Lifecycle, step: str
) -> None:
    life.start("c1")
    before = state(verbs)
    fake.fail_on.add(step)
    with pytest.raises(ToolError, match=f"fake {step} failed"):
        verbs.attach("default", "data", "c1", "/mnt/data")
    assert state(verbs) == before


def test_a_failed_live_detach_changes_nothing(verbs: Volumes, fake: VolumeFake, life: Lifecycle) -> None:
    verbs.attach("default", "data", "c1", "/mnt/data")
    life.start("c1")
    before = state(verbs)
    fake.fail_on.add("detach_volume")
    with pytest.raises(ToolError):
        verbs.detach("default", "data", "c1")
    assert state(verbs) == before


def test_what_cannot_go_together_is_refused(verbs: Volumes, life: Lifecycle, fake: VolumeFake) -> None:
    verbs.attach("default", "data", "c1", "/mnt/data")
    before = state(verbs)
    cases = [
        (("default", "disk", "c1", "/mnt/disk"), SpecError, "block volume .a disk, for VMs."),
        (("default", "logs", "v1", None), SpecError, "filesystem volume: a VM takes block volumes"),
        (("default", "disk", "v1", "/mnt"), SpecError, "takes no path"),
        (("default", "logs", "c1", None), SpecError, "needs a path"),
        (("default", "logs", "c1", "/proc/x"), SpecError, "kernel"),
        (("default", "logs", "c1", "/mnt/../x"), SpecError, "'..'"),
        (("default", "logs", "c1", "/mnt/data"), ConflictError, "overlaps volume default/data"),
        (("default", "logs", "c1", "/mnt/data/sub"), ConflictError, "overlaps"),
        (("default", "logs", "c1", "/mnt"), ConflictError, "overlaps"),
        (("default", "data", "c1", "/other"), StateError, "already attached to c1"),
        (("default", "data", "c2", "/mnt/data"), StateError, "already attached to c1"),
        (("default", "nope", "c1", "/x"), NotFoundError, "nope"),
        (("nopool", "data", "c1", "/x"), NotFoundError, "nopool"),
        (("default", "logs", "ghost", "/x"), NotFoundError, "ghost"),
        (("default", "logs", "Bad_Name", "/x"), SpecError, "invalid"),
    ]
    for args, error, words in cases:
        with pytest.raises(error, match=words):
            verbs.attach(*args)
        assert state(verbs) == before, args
    life.start("v1")
    fake.fail_on.add("attach_volume_check")  # the driver refuses it (a microvm cannot hot-plug)
    with pytest.raises(ToolError, match="fake attach_volume_check failed"):
        verbs.attach("default", "disk", "v1")
    assert state(verbs) == before


def test_detaching_what_is_not_attached_is_refused(verbs: Volumes, life: Lifecycle) -> None:
    verbs.attach("default", "data", "c1", "/mnt/data")
    before = state(verbs)
    for args, error, words in [
        (("default", "logs", "c1"), StateError, "'logs' of pool 'default' is not attached to c1$"),
        (("default", "data", "c2"), StateError, "not attached to c2 .it is attached to c1."),
        (("default", "data", "ghost"), NotFoundError, "ghost"),
        (("default", "nope", "c1"), NotFoundError, "nope"),
    ]:
        with pytest.raises(error, match=words):
            verbs.detach(*args)
        assert state(verbs) == before


def test_a_stopped_vm_records_a_block_volume(verbs: Volumes, fake: VolumeFake) -> None:
    done = verbs.attach("default", "disk", "v1")
    assert done.volume.path is None and done.volume.device == "vol0" and done.volume.format == "qcow2"
    assert done.volume.limits == {"limits.read_iops": "500"} and done.volume.source.endswith(
        "block/disk.qcow2"
    )
    assert done.notices == [] and "vk-vol0" in verbs.life.runtime("v1").argv
    assert fake.attached == [("v1", "vol0", False)]  # only checked: its next start reads the record
    verbs.detach("default", "disk", "v1")
    fake.vm_consumes = False  # a driver that does not pass volumes to QEMU: said
    assert "will start without it" in verbs.attach("default", "disk", "v1").notices[0]


def test_a_running_vm_gets_and_loses_a_volume_at_once(
    verbs: Volumes, life: Lifecycle, fake: VolumeFake
) -> None:
    life.start("v1")
    verbs.attach("default", "disk", "v1")
    assert fake.attached == [("v1", "vol0", False), ("v1", "vol0", True)]  # checked, then plugged
    verbs.detach("default", "disk", "v1")
    assert fake.detached == [("v1", "vol0")] and attached_to(verbs, "disk") is None


def test_deleting_an_instance_detaches_its_volumes_and_keeps_their_data(
    verbs: Volumes, life: Lifecycle
) -> None:
    verbs.attach("default", "data", "c1", "/mnt/data")
    verbs.attach("default", "logs", "c1", "/logs")
    verbs.attach("default", "disk", "v1")
    directory = verbs.storage.path_of(verbs.storage.volume("default", "data"))
    (directory / "kept").write_text("data")
    life.delete("c1")
    assert attached_to(verbs, "data") is None and attached_to(verbs, "logs") is None
    assert attached_to(verbs, "disk") == "v1"  # another instance's: untouched
    assert (directory / "kept").read_text() == "data"
    assert verbs.attach("default", "data", "c2", "/srv").volume.device == "vol0"


def test_a_claim_left_by_a_deleted_instance_is_released(verbs: Volumes) -> None:
    verbs.storage.claim("default", "logs", "gone")  # as an interrupted delete could leave it
    done = verbs.detach("default", "logs", "gone")
    assert "no longer exists" in done.notices[0] and attached_to(verbs, "logs") is None


def test_an_instance_has_a_bounded_number_of_volumes(verbs: Volumes, store: SqliteStore) -> None:
    for index in range(MAX_VOLUMES):
        store.create(VolumeRecord(pool="default", name=f"b{index}", size=1 << 20))
        verbs.attach("default", f"b{index}", "v1")
    store.create(VolumeRecord(pool="default", name="extra", size=1 << 20))
    with pytest.raises(SpecError, match=f"{MAX_VOLUMES} volumes already"):
        verbs.attach("default", "extra", "v1")
    assert attached_to(verbs, "extra") is None
    record = store.get(InstanceRecord, "v1")
    assert [a.device for a in record.volumes] == [f"vol{i}" for i in range(MAX_VOLUMES)]
    assert record.state is InstanceState.STOPPED


def test_attaching_makes_the_pools_filesystem_directory_roots_alone(verbs: Volumes) -> None:
    directory = Path(verbs.storage.pool("default").path, "filesystem")
    assert directory.stat().st_mode & 0o777 == 0o700  # so made
    directory.chmod(0o755)  # as a pool made before it was
    verbs.attach("default", "data", "c1", "/mnt/data")
    assert directory.stat().st_mode & 0o777 == 0o700
