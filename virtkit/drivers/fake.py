"""An in-memory driver for fast unit tests of ops/: it keeps instance states in a dict.

It lets tests make any step fail (`fail_on`) to prove ops undo what they did. Never used outside tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from virtkit.drivers.base import (
    ByteSink,
    ByteSource,
    ExecResult,
    InstancePaths,
    Plugged,
    Runtime,
    Stats,
    Status,
)
from virtkit.drivers.console import Console
from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError, ToolError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, InstanceState, Nic, VolumeAttachment


class FakeDriver:
    """A driver whose instances are entries in `states`, keyed by instance UUID."""

    def __init__(self, kind: InstanceKind = InstanceKind.VM) -> None:
        self.kind = kind
        self.states: dict[str, InstanceState] = {}
        self.fail_on: set[str] = set()
        self.calls: list[str] = []
        self.updated: dict[str, Runtime] = {}  # the runtime each running instance was updated to
        # Files inside, by instance UUID then path: (bytes, uid, gid, mode); S_IFDIR in mode: a directory.
        self.files: dict[str, dict[str, tuple[bytes, int, int, int]]] = {}
        self.counters: dict[str, Stats] = {}  # what `stats` reports of a running instance, by UUID

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail_on:
            raise ToolError(f"fake {name} failed")

    def generate(
        self, record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
    ) -> Runtime:
        self._step("generate")
        argv = ["fake", record.uuid, f"cpus={record.cpus:g}", f"memory={record.memory}"]
        argv += [f"{key}={value}" for key, value in sorted(record.config.items())]
        return Runtime(kind=self.kind.value, argv=argv, notices=["fake notice"])

    def prepare(
        self, record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
    ) -> None:
        self._step("prepare")
        (paths.dir / "disk").write_text("overlay")

    def start(
        self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths, plugged: Plugged = None
    ) -> None:
        self._step("start")
        if plugged is not None:
            plugged()
        self.states[record.uuid] = InstanceState.RUNNING

    def wait_ready(self, record: InstanceRecord, paths: InstancePaths, timeout: float) -> dict[str, float]:
        self._step("wait_ready")
        return {"spawn": 0.01, "ready": 0.02}

    def stop(self, record: InstanceRecord, paths: InstancePaths, *, force: bool, timeout: float) -> None:
        self._step("stop_force" if force else "stop")
        self.states[record.uuid] = InstanceState.STOPPED

    def pause(self, record: InstanceRecord, paths: InstancePaths) -> None:
        self._step("pause")
        self.states[record.uuid] = InstanceState.PAUSED

    def resume(self, record: InstanceRecord, paths: InstancePaths) -> None:
        self._step("resume")
        self.states[record.uuid] = InstanceState.RUNNING

    def status(self, record: InstanceRecord, paths: InstancePaths) -> Status:
        state = self.states.get(record.uuid, InstanceState.STOPPED)
        return Status(state=state, pid=4242 if state is not InstanceState.STOPPED else None)

    def stats(self, record: InstanceRecord, paths: InstancePaths) -> Stats:
        self._step("stats")
        if self.states.get(record.uuid, InstanceState.STOPPED) is InstanceState.STOPPED:
            return Stats()
        return self.counters.get(record.uuid, Stats())

    def exec(
        self, record: InstanceRecord, paths: InstancePaths, argv: Sequence[str], timeout: float
    ) -> ExecResult:
        self._step("exec")
        if self.states.get(record.uuid) is not InstanceState.RUNNING:
            raise StateError("not running")
        return ExecResult(0, " ".join(argv).encode(), b"")

    def open_console(self, record: InstanceRecord, paths: InstancePaths) -> Console:
        raise StateError("the fake driver has no console")

    def log_decoder(self) -> Callable[[bytes], bytes]:
        return bytes

    def exec_attached(
        self, record: InstanceRecord, paths: InstancePaths, argv: Sequence[str], *, tty: bool, timeout: float
    ) -> int:
        return self.exec(record, paths, argv, timeout).exit_code

    def run_foreground(
        self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths
    ) -> tuple[int, str]:
        self._step("run_foreground")
        return 0, ""

    def update(self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths) -> None:
        self._step("update")
        self.updated[record.uuid] = runtime

    def plug_nic(self, record: InstanceRecord, paths: InstancePaths, nic: Nic, bridge: str) -> None:
        self._step("plug_nic")

    def unplug_nic(self, record: InstanceRecord, paths: InstancePaths, nic: Nic) -> None:
        self._step("unplug_nic")

    def attach_volume(
        self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment, *, live: bool
    ) -> None:
        self._step("attach_volume_live" if live else "attach_volume_check")

    def detach_volume(self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment) -> None:
        self._step("detach_volume")

    def cleanup(self, record: InstanceRecord, paths: InstancePaths) -> None:
        self._step("cleanup")

    def push_file(
        self, record: InstanceRecord, paths: InstancePaths, path: str, source: ByteSource, *,
        size: int | None, uid: int, gid: int, mode: int,
    ) -> int:
        self._step("push_file")
        files = self.files.setdefault(record.uuid, {})
        if files.get(path, (b"", 0, 0, 0))[3] & 0o40000:
            raise ConflictError(f"{path} is a directory in {record.name}")
        chunks = []
        while chunk := source.read(1 << 16):
            chunks.append(chunk)
        data = b"".join(chunks)
        files[path] = (data, uid, gid, mode)
        return len(data)

    def pull_file(self, record: InstanceRecord, paths: InstancePaths, path: str, sink: ByteSink) -> int:
        self._step("pull_file")
        found = self.files.get(record.uuid, {}).get(path)
        if found is None:
            raise NotFoundError(f"{path} does not exist in {record.name}")
        if found[3] & 0o40000:
            raise SpecError(f"{path} is a directory")
        sink.write(found[0])
        return len(found[0])
