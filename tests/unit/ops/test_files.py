"""`file push|pull` over the FakeDriver and a real SQLite store: what is checked before anything is
touched, which states allow a copy, the lock held, and the local side (atomic, nothing left on
failure, local errors told as local)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from virtkit.drivers.base import ByteSink, ByteSource, InstancePaths
from virtkit.drivers.fake import FakeDriver
from virtkit.errors import BusyError, ConflictError, NotFoundError, SpecError, StateError, VirtkitError
from virtkit.images.staged import DISK, ROOTFS, StagedImage
from virtkit.model import InstanceKind, InstanceRecord
from virtkit.ops.files import Files, check_path, parse_mode
from virtkit.ops.images import add_staged
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.store import SqliteStore


@pytest.fixture
def life(root: Path, store: SqliteStore, fake: FakeDriver) -> Lifecycle:
    def make(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(b"disk")
        (staging / "rootfs").mkdir()
        return StagedImage("tiny", ["vm", "container"], "x86_64", "tiny", "t",
                           files={DISK: "disk.qcow2", ROOTFS: "rootfs"})  # fmt: skip

    add_staged(root, store, make, alias="tiny")
    return Lifecycle(root, store, drivers=lambda kind: fake)


@pytest.fixture
def files(root: Path, store: SqliteStore, fake: FakeDriver) -> Files:
    return Files(root, store, drivers=lambda kind: fake)


def launch(life: Lifecycle, name: str, kind: InstanceKind, *, start: bool = True) -> None:
    request = Request(image="tiny", name=name, kind=kind)
    if start:
        life.launch(request)
    else:
        life.create(request)


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """A local directory of the test's own (the state root is beside it)."""
    (tmp_path / "local").mkdir()
    return tmp_path / "local"


def test_push_then_pull_round_trips(life: Lifecycle, files: Files, fake: FakeDriver, here: Path) -> None:
    launch(life, "c1", InstanceKind.CONTAINER)
    data = bytes(range(256)) * 1000
    local = here / "in.bin"
    local.write_bytes(data)
    pushed = files.push("c1", "/etc/app.conf", local, uid=1000, gid=100, mode=0o600)
    assert (pushed.size, pushed.path, pushed.local) == (len(data), "/etc/app.conf", str(local))
    uuid = life.view("c1").record.uuid
    assert fake.files[uuid]["/etc/app.conf"] == (data, 1000, 100, 0o600)
    assert files.push("c1", "/etc/default", io.BytesIO(b"x")).to_dict() == {
        "instance": "c1", "path": "/etc/default", "bytes": 1, "local": "-"}  # fmt: skip
    assert fake.files[uuid]["/etc/default"] == (b"x", 0, 0, 0o644)  # root:root 0644 by default

    out = io.BytesIO()
    assert files.pull("c1", "/etc/app.conf", out).size == len(data)
    assert out.getvalue() == data
    pulled = files.pull("c1", "/etc/app.conf", here / "out.bin")
    assert (here / "out.bin").read_bytes() == data and pulled.local == str(here / "out.bin")
    files.pull("c1", "/etc/app.conf", here)  # into a directory: under the file's own name
    assert (here / "app.conf").read_bytes() == data
    assert sorted(p.name for p in here.iterdir()) == ["app.conf", "in.bin", "out.bin"]  # no temp left


def test_sizes_reach_the_driver(life: Lifecycle, files: Files, fake: FakeDriver, tmp_path: Path) -> None:
    seen: list[int | None] = []
    original = fake.push_file

    def spy(record: InstanceRecord, paths: InstancePaths, path: str, source: ByteSource, *,
            size: int | None, uid: int, gid: int, mode: int) -> int:  # fmt: skip
        seen.append(size)
        return original(record, paths, path, source, size=size, uid=uid, gid=gid, mode=mode)

    fake.push_file = spy  # type: ignore[method-assign]
    launch(life, "c1", InstanceKind.CONTAINER)
    (tmp_path / "f").write_bytes(b"12345")
    files.push("c1", "/f", tmp_path / "f")
    files.push("c1", "/g", io.BytesIO(b"123"))  # a stream of unknown length (as a pipe)
    with (tmp_path / "f").open("rb") as redirected:  # `< f`: stdin is a regular file
        redirected.read(2)
        files.push("c1", "/h", redirected)
    assert seen == [5, None, 3]


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("etc/hosts", "must be absolute"),
        ("", "must be absolute"),
        ("./x", "must be absolute"),
        ("/etc/", "names a directory"),
        ("/", "names a directory"),
        ("/etc/..", "names a directory"),
        ("/etc/.", "names a directory"),
        ("/a\0b", "NUL"),
    ],
)
def test_bad_paths_are_refused_before_anything(
    life: Lifecycle, files: Files, fake: FakeDriver, path: str, needle: str
) -> None:
    launch(life, "c1", InstanceKind.CONTAINER)
    calls = list(fake.calls)
    with pytest.raises(SpecError, match=needle):
        files.push("c1", path, io.BytesIO(b"x"))
    with pytest.raises(SpecError, match=needle):
        files.pull("c1", path, io.BytesIO())
    assert fake.calls == calls


def test_check_path_and_parse_mode() -> None:
    assert check_path("/etc/hosts") == "/etc/hosts"
    assert [parse_mode(m) for m in ("0644", "644", "0o755", "4755", "0")] == [0o644, 0o644, 0o755, 0o4755, 0]
    for bad in ("", "rw-r--r--", "0o", "999", "17777", "-1", "0x1ff"):
        with pytest.raises(SpecError, match="invalid mode"):
            parse_mode(bad)


def test_ids_and_mode_in_range(life: Lifecycle, files: Files) -> None:
    launch(life, "c1", InstanceKind.CONTAINER)
    for kwargs, needle in (({"uid": -1}, "invalid uid -1"), ({"gid": 2**32 - 1}, "invalid gid"),
                           ({"mode": 0o10000}, "invalid mode")):  # fmt: skip
        with pytest.raises(SpecError, match=needle):
            files.push("c1", "/f", io.BytesIO(b"x"), **kwargs)


def test_missing_instance_and_local_file(life: Lifecycle, files: Files, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        files.push("nope", "/f", io.BytesIO(b"x"))
    with pytest.raises(NotFoundError, match="not found"):
        files.pull("nope", "/f", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    launch(life, "c1", InstanceKind.CONTAINER)
    with pytest.raises(SpecError, match=r"local file .*missing does not exist"):
        files.push("c1", "/f", tmp_path / "missing")
    with pytest.raises(SpecError, match="is a directory: only files can be pushed"):
        files.push("c1", "/f", tmp_path)
    with pytest.raises(SpecError, match=r"local directory .*nodir does not exist"):
        files.pull("c1", "/f", tmp_path / "nodir" / "out")


def test_which_states_allow_a_copy(life: Lifecycle, files: Files, fake: FakeDriver) -> None:
    launch(life, "c1", InstanceKind.CONTAINER, start=False)  # stopped: its driver mounts its rootfs
    files.push("c1", "/f", io.BytesIO(b"offline"))
    out = io.BytesIO()
    files.pull("c1", "/f", out)
    assert out.getvalue() == b"offline"

    launch(life, "vm1", InstanceKind.VM, start=False)
    with pytest.raises(StateError, match="'vm1' is stopped: start it first") as caught:
        files.push("vm1", "/f", io.BytesIO(b"x"))
    assert caught.value.hint is not None and "guest agent" in caught.value.hint
    with pytest.raises(StateError, match="start it first"):
        files.pull("vm1", "/f", io.BytesIO())
    life.start("vm1")
    files.push("vm1", "/f", io.BytesIO(b"x"))
    life.pause("vm1")
    with pytest.raises(StateError, match="'vm1' is paused: resume it first"):
        files.pull("vm1", "/f", io.BytesIO())
    assert fake.calls.count("push_file") == 2 and fake.calls.count("pull_file") == 1


def test_the_instance_lock_is_held_during_the_copy(
    life: Lifecycle, files: Files, fake: FakeDriver, store: SqliteStore
) -> None:
    launch(life, "c1", InstanceKind.CONTAINER)
    outcome: list[str] = []

    class Probe(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            def other() -> None:  # another virtkit command (stop, delete) on the same instance
                try:
                    with store.lock("instance", "c1", timeout=0.05):
                        outcome.append("acquired")
                except BusyError:
                    outcome.append("busy")

            if not outcome:
                thread = threading.Thread(target=other)
                thread.start()
                thread.join()
            return super().read(size)

    files.push("c1", "/f", Probe(b"data"))
    assert outcome == ["busy"]
    with store.lock("instance", "c1", timeout=1):  # released after
        pass


def test_a_failed_pull_leaves_the_old_file(life: Lifecycle, files: Files, here: Path) -> None:
    launch(life, "c1", InstanceKind.CONTAINER)
    target = here / "keep"
    target.write_bytes(b"old")
    with pytest.raises(NotFoundError, match="does not exist"):
        files.pull("c1", "/missing", target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in here.iterdir()] == ["keep"]


def test_driver_errors_pass_and_undo_nothing_local(
    life: Lifecycle, files: Files, fake: FakeDriver, here: Path
) -> None:
    launch(life, "c1", InstanceKind.CONTAINER)
    uuid = life.view("c1").record.uuid
    fake.files[uuid] = {"/etc": (b"", 0, 0, 0o40755)}
    with pytest.raises(ConflictError, match="is a directory"):
        files.push("c1", "/etc", io.BytesIO(b"x"))
    with pytest.raises(SpecError, match="is a directory"):
        files.pull("c1", "/etc", here / "etc")
    assert list(here.iterdir()) == []


class Broken(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        raise OSError(5, "Input/output error")

    def write(self, data: object, /) -> int:
        raise OSError(28, "No space left on device")


def test_local_errors_are_said_as_local(life: Lifecycle, files: Files) -> None:
    launch(life, "c1", InstanceKind.CONTAINER)
    with pytest.raises(VirtkitError, match="cannot read standard input: Input/output error"):
        files.push("c1", "/f", Broken())
    files.push("c1", "/f", io.BytesIO(b"x"))
    sink: ByteSink = Broken()
    with pytest.raises(VirtkitError, match="cannot write standard output: No space left on device"):
        files.pull("c1", "/f", sink)


def test_pull_writes_into_a_fifo_or_device(life: Lifecycle, files: Files) -> None:
    launch(life, "c1", InstanceKind.CONTAINER)
    files.push("c1", "/f", io.BytesIO(b"x"))
    assert files.pull("c1", "/f", Path("/dev/null")).local == "/dev/null"
    assert Path("/dev/null").is_char_device()  # written into, not replaced
