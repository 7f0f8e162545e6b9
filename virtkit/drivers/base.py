"""The one contract every kind of instance meets (QEMU VMs, OCI containers), and the driver registry.

A driver turns an instance record and its image into a runtime description without side effects
(`generate`: the QEMU argv, the OCI config.json), which ops save beside the instance; then it
executes that saved runtime (`start`), and re-derives the live state from what the host shows
(`status`: pidfile guarded by the instance UUID in /proc/PID/cmdline, sockets). No Python process
stays behind per instance: a later virtkit process re-attaches through the same files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from virtkit.errors import SpecError

if TYPE_CHECKING:  # not at run time: `virtkit run` reaches this module without pydantic
    from virtkit.drivers.console import Console
    from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, InstanceState, Nic, VolumeAttachment

Plugged = Callable[[], None] | None  # see Driver.start

INSTANCES_DIR = "instances"
CGROUP_PARENT = "virtkit"  # every instance's cgroup is /virtkit/ID in each hierarchy (drivers/cgroup.py)
ONESHOTS_DIR = "oneshots"  # `virtkit run --rm` containers: never registered, gone when they end


@dataclass(frozen=True)
class InstancePaths:
    """Where one instance's files live: ROOT/instances/NAME/."""

    dir: Path

    @classmethod
    def of(cls, root: Path, name: str) -> InstancePaths:
        return cls(root / INSTANCES_DIR / name)

    @property
    def runtime(self) -> Path:
        """The saved runtime description (argv or config), what restart and migration reuse."""
        return self.dir / "runtime.json"

    @property
    def pidfile(self) -> Path:
        return self.dir / "pid"

    @property
    def monitor(self) -> Path:
        """QMP socket (VMs) or the monitor's control socket (containers)."""
        return self.dir / "monitor.sock"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def log(self) -> Path:
        """The runtime's own log (QEMU's stderr, conmon's log): where a death's reason is found."""
        return self.dir / "runtime.log"


@dataclass(frozen=True)
class Runtime:
    """What `generate` produces: enough to start the instance again without the image logic."""

    kind: str
    argv: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)  # said to the user (e.g. "running under TCG")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "argv": self.argv, "config": self.config, "notices": self.notices}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Runtime:
        return cls(str(data["kind"]), list(data["argv"]), dict(data["config"]), list(data.get("notices", [])))


@dataclass(frozen=True)
class Status:
    """The live state of an instance as the host shows it right now."""

    state: InstanceState
    pid: int | None = None
    reason: str = ""  # why it is stopped/in error (from its log), when known
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stats:
    """What a running instance has used of the host so far, as the kernel or its runtime counts it
    (`Driver.stats`). None: not counted here (never a guess)."""

    cpu_seconds: float | None = None  # CPU time of everything that runs for it
    memory_bytes: int | None = None  # memory in use now
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class ByteSource(Protocol):
    """Where pushed bytes come from (a file opened "rb", stdin): read in chunks, b"" at the end."""

    def read(self, size: int, /) -> bytes: ...


class ByteSink(Protocol):
    """Where pulled bytes go (a file opened "wb", stdout)."""

    def write(self, data: bytes, /) -> object: ...


class Driver(Protocol):
    """What ops need from a kind of instance."""

    kind: InstanceKind

    def generate(
        self, record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
    ) -> Runtime:
        """Describe how to run `record` (pure but for reading the host's capabilities)."""

    def prepare(
        self, record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
    ) -> None:
        """Make the instance's own files (its disk overlay, its rootfs upper layer)."""

    def start(
        self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths, plugged: Plugged = None
    ) -> None:
        """Execute the saved runtime; returns once the process runs (not once the guest is ready).
        `plugged` is called once the instance's host-side network devices exist and before the
        guest runs (its firewall rules and rate limits go on then); a failure in it fails the start."""

    def wait_ready(self, record: InstanceRecord, paths: InstancePaths, timeout: float) -> dict[str, float]:
        """Wait (bounded) for the guest to announce readiness; returns the boot phases in seconds."""

    def stop(self, record: InstanceRecord, paths: InstancePaths, *, force: bool, timeout: float) -> None:
        """Stop gracefully (then forcibly after `timeout`), or at once with `force`."""

    def pause(self, record: InstanceRecord, paths: InstancePaths) -> None: ...

    def resume(self, record: InstanceRecord, paths: InstancePaths) -> None: ...

    def status(self, record: InstanceRecord, paths: InstancePaths) -> Status:
        """The live state, re-derived from pidfile, /proc and sockets."""

    def stats(self, record: InstanceRecord, paths: InstancePaths) -> Stats:
        """The instance's counters (CPU time, memory, disk bytes) right now; None for what this
        host does not count (all of them for an instance that is not running: ops ask only running
        and paused ones). Its network bytes are its host-side devices' (ops/metrics.py)."""

    def exec(
        self, record: InstanceRecord, paths: InstancePaths, argv: Sequence[str], timeout: float
    ) -> ExecResult:
        """Run a command inside and return its exit code and output."""

    def open_console(self, record: InstanceRecord, paths: InstancePaths) -> Console:
        """Connect to the running instance's console (StateError when it has none to attach to)."""

    def log_decoder(self) -> Callable[[bytes], bytes]:
        """A function turning successive pieces of the console log into what the instance wrote
        (the monitor's framing taken off)."""

    def exec_attached(
        self, record: InstanceRecord, paths: InstancePaths, argv: Sequence[str], *, tty: bool, timeout: float
    ) -> int:
        """Run a command inside with the caller's stdio (a terminal with `tty`, where the kind has
        one); its exit status. `timeout` bounds what cannot stream (a VM's agent)."""

    def run_foreground(
        self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths
    ) -> tuple[int, str]:
        """Run the saved runtime with the caller's stdio until it ends (`virtkit run`): its exit
        status, and the runtime's own error when it never started ("" otherwise)."""

    def update(self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths) -> None:
        """Apply the limits of a regenerated `runtime` to the running instance (StateError for what
        can only change at its next start; nothing is changed then)."""

    def plug_nic(self, record: InstanceRecord, paths: InstancePaths, nic: Nic, bridge: str) -> None:
        """Hot-plug `nic` (its host device enslaved to `bridge`) into the running instance; StateError
        where the kind or machine cannot. Nothing is left plugged when it fails."""

    def unplug_nic(self, record: InstanceRecord, paths: InstancePaths, nic: Nic) -> None:
        """Hot-unplug `nic` from the running instance (a bounded wait for the guest to let it go)
        and remove its host device."""

    def attach_volume(
        self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment, *, live: bool
    ) -> None:
        """Check that `volume` can be given to the instance at its next start; with `live`, give it
        to the running instance now. StateError where the kind cannot; nothing left when it fails."""

    def detach_volume(self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment) -> None:
        """Take `volume` out of the running instance (its data untouched)."""

    def cleanup(self, record: InstanceRecord, paths: InstancePaths) -> None:
        """Remove what the runtime left (sockets, pidfile) after the instance stopped."""

    def push_file(
        self, record: InstanceRecord, paths: InstancePaths, path: str, source: ByteSource, *,
        size: int | None, uid: int, gid: int, mode: int,
    ) -> int:
        """Write `source` (`size` bytes when known) to the absolute `path` inside, replacing what is
        there atomically, owned uid:gid as seen inside, with `mode`; the bytes written."""

    def pull_file(self, record: InstanceRecord, paths: InstancePaths, path: str, sink: ByteSink) -> int:
        """Copy the regular file at the absolute `path` inside to `sink`; the bytes copied."""


_DRIVERS = {
    "vm": "virtkit.drivers.qemu:QemuDriver",
    "container": "virtkit.drivers.oci:OciDriver",
}


def get_driver(kind: InstanceKind | str) -> Driver:
    """The driver for a kind of instance."""
    try:
        target = _DRIVERS[str(kind)]
    except KeyError:
        raise SpecError(f"no driver for instances of kind {kind!r}") from None
    module_name, attribute = target.split(":")
    driver: Driver = getattr(importlib.import_module(module_name), attribute)()
    return driver
