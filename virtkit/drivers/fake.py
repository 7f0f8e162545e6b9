"""An in-memory driver for fast unit tests of ops/: it keeps instance states in a dict.

It lets tests make any step fail (`fail_on`) to prove ops undo what they did. Never used outside tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from virtkit.drivers.base import ExecResult, InstancePaths, Runtime, Status
from virtkit.errors import StateError, ToolError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, InstanceState


class FakeDriver:
    """A driver whose instances are entries in `states`, keyed by instance UUID."""

    def __init__(self, kind: InstanceKind = InstanceKind.VM) -> None:
        self.kind = kind
        self.states: dict[str, InstanceState] = {}
        self.fail_on: set[str] = set()
        self.calls: list[str] = []
        self.updated: dict[str, Runtime] = {}  # the runtime each running instance was updated to

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

    def start(self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths) -> None:
        self._step("start")
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

    def exec(
        self, record: InstanceRecord, paths: InstancePaths, argv: Sequence[str], timeout: float
    ) -> ExecResult:
        self._step("exec")
        if self.states.get(record.uuid) is not InstanceState.RUNNING:
            raise StateError("not running")
        return ExecResult(0, " ".join(argv).encode(), b"")

    def update(self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths) -> None:
        self._step("update")
        self.updated[record.uuid] = runtime

    def cleanup(self, record: InstanceRecord, paths: InstancePaths) -> None:
        self._step("cleanup")
