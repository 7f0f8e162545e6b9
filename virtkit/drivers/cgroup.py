"""An instance's own cgroup: made before its process starts, joined by that process before it execs,
its limits changed while it runs, its usage read, removed once the process is gone.

cgroup v2 (the unified tree at /sys/fs/cgroup) or v1 (one hierarchy per controller; hybrid hosts
keep their resource controllers there). Each instance gets ``virtkit/NAME.UUID8`` in every
hierarchy that holds one of the controllers it needs, so two state roots on one machine (two test
"hosts") never share a cgroup. The limits are the kernel's:

    cpu     quota per period (v2 cpu.max, v1 cpu.cfs_quota_us/cpu.cfs_period_us)
    memory  ceiling in bytes (v2 memory.max, v1 memory.limit_in_bytes)

Joining is done by the child itself between fork and exec (`join`, through files the parent
opened), so not one instruction of the instance's process runs outside its limits.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.drivers.base import CGROUP_PARENT
from virtkit.errors import HostCapabilityError
from virtkit.logs import get_logger

if TYPE_CHECKING:
    from virtkit.host.cgroups import Mount

log = get_logger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = CGROUP_PARENT
V2_CONTROLLERS = ("cpu", "memory", "pids")
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
DEFAULT_PERIOD = 100_000  # microseconds, the kernel's default CFS period
REMOVE_TIMEOUT = 5.0  # a cgroup whose last process just died can be busy for a moment


@dataclass(frozen=True)
class Limits:
    """What an instance may use; None is no limit."""

    cpu_quota: int | None = None  # microseconds of CPU time per period
    cpu_period: int = DEFAULT_PERIOD
    memory_max: int | None = None  # bytes


@dataclass(frozen=True)
class Layout:
    """Where the controllers are: one cgroup2 tree, or a v1 mount point per controller."""

    unified: Path | None = None
    v1: dict[str, Path] = field(default_factory=dict)

    @property
    def controllers(self) -> set[str]:
        if self.unified is not None:
            try:
                return set((self.unified / "cgroup.controllers").read_text().split())
            except OSError:
                return set()
        return set(self.v1)


def detect_layout(mounts: list[Mount] | None = None) -> Layout:
    """The cgroup layout of this host (from /proc/self/mounts)."""
    from virtkit.host.cgroups import read_mounts  # the host probes: only when the layout is needed

    mounts = read_mounts(Path("/")) if mounts is None else mounts
    for mount in mounts:
        if mount.fstype == "cgroup2" and Path(mount.target) == CGROUP_ROOT:
            return Layout(unified=CGROUP_ROOT)
    v1: dict[str, Path] = {}
    for mount in mounts:
        if mount.fstype == "cgroup":
            for controller in V1_CONTROLLERS:
                if controller in mount.options:
                    v1.setdefault(controller, Path(mount.target))
    return Layout(v1=v1)


def cgroup_name(name: str, uuid: str, root: Path | None = None) -> str:
    """The instance's cgroup, relative to each hierarchy's root. With `root` (the state root), a
    tag of it too: two roots on one machine are two hosts, and a VM moved live between them runs
    in both for a moment, each QEMU in its own cgroup and under its own memory ceiling."""
    tag = f".{hashlib.sha256(str(root).encode()).hexdigest()[:6]}" if root is not None else ""
    return f"{PARENT}/{name}.{uuid.split('-')[0]}{tag}"


class Cgroup:
    """One instance's cgroup in every hierarchy that matters."""

    def __init__(self, relative: str, layout: Layout | None = None) -> None:
        self.relative = relative
        self.layout = layout or detect_layout()

    def dirs(self) -> dict[str, Path]:
        """Controller (or "unified") -> the cgroup's directory."""
        if self.layout.unified is not None:
            return {"unified": self.layout.unified / self.relative}
        return {name: root / self.relative for name, root in self.layout.v1.items()}

    def _dir(self, controller: str) -> Path | None:
        dirs = self.dirs()
        return dirs.get("unified", dirs.get(controller))

    def require(self, limits: Limits) -> None:
        """HostCapabilityError when this host cannot enforce `limits`."""
        have = self.layout.controllers
        if limits.cpu_quota is not None and "cpu" not in have:
            raise HostCapabilityError(
                "no cpu cgroup controller here: a CPU allowance cannot be enforced",
                hint="see `virtkit host check` (cgroups)",
            )

    def create(self, limits: Limits) -> None:
        """Make the cgroup (removing an empty leftover of a previous run) and write its limits."""
        self.remove()
        if self.layout.unified is not None:
            self._enable_v2(self.layout.unified)
        for path in self._unique_dirs():
            path.mkdir(parents=True, exist_ok=True)
        try:
            self.set(limits)
        except BaseException:
            self.remove()
            raise

    def _enable_v2(self, root: Path) -> None:
        """Let the controllers reach the instance's cgroup (each level must delegate them)."""
        wanted = [name for name in V2_CONTROLLERS if name in self.layout.controllers]
        level = root
        for part in Path(self.relative).parts[:-1]:
            _write(level / "cgroup.subtree_control", " ".join(f"+{name}" for name in wanted))
            level = level / part
            level.mkdir(exist_ok=True)
        _write(level / "cgroup.subtree_control", " ".join(f"+{name}" for name in wanted))

    def _unique_dirs(self) -> list[Path]:
        return sorted(set(self.dirs().values()))

    def set(self, limits: Limits) -> None:
        """Write `limits` (the cgroup exists); None lifts a limit."""
        cpu, memory = self._dir("cpu"), self._dir("memory")
        if self.layout.unified is not None:
            if cpu is not None and "cpu" in self.layout.controllers:
                quota = "max" if limits.cpu_quota is None else str(limits.cpu_quota)
                _write(cpu / "cpu.max", f"{quota} {limits.cpu_period}")
            if memory is not None and "memory" in self.layout.controllers:
                _write(memory / "memory.max", "max" if limits.memory_max is None else str(limits.memory_max))
            return
        if cpu is not None:
            # The quota goes first when lifting it: a period shorter than the quota would be refused.
            _write(cpu / "cpu.cfs_quota_us", "-1")
            _write(cpu / "cpu.cfs_period_us", str(limits.cpu_period))
            if limits.cpu_quota is not None:
                _write(cpu / "cpu.cfs_quota_us", str(limits.cpu_quota))
        if memory is not None:
            ceiling = "-1" if limits.memory_max is None else str(limits.memory_max)
            _write(memory / "memory.limit_in_bytes", ceiling)

    def open_procs(self) -> list[int]:
        """File descriptors of each hierarchy's cgroup.procs, for `join` in the child (close them after)."""
        fds: list[int] = []
        try:
            for path in self._unique_dirs():
                fds.append(os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError as exc:
            close_all(fds)
            raise HostCapabilityError(f"cannot join cgroup {self.relative}: {exc.strerror}") from exc
        return fds

    def pids(self) -> list[int]:
        path = next(iter(self._unique_dirs()), None)
        if path is None:
            return []
        try:
            return [int(line) for line in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def cpu_seconds(self) -> float | None:
        """CPU time used by the cgroup's processes so far."""
        if self.layout.unified is not None:
            text = _read(self.layout.unified / self.relative / "cpu.stat")
            for line in (text or "").splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
            return None
        path = self._dir("cpuacct")
        text = _read(path / "cpuacct.usage") if path else None
        return int(text) / 1e9 if text else None

    def memory_bytes(self) -> int | None:
        path = self._dir("memory")
        if path is None:
            return None
        name = "memory.current" if self.layout.unified is not None else "memory.usage_in_bytes"
        text = _read(path / name)
        return int(text) if text else None

    def memory_limit(self) -> int | None:
        path = self._dir("memory")
        name = "memory.max" if self.layout.unified is not None else "memory.limit_in_bytes"
        text = _read(path / name) if path else None
        if text is None or text == "max" or int(text) >= 1 << 62:
            return None
        return int(text)

    def oom_kills(self) -> int:
        """How many processes the kernel killed in this cgroup for going over its memory ceiling."""
        path = self._dir("memory")
        if path is None:
            return 0
        name = "memory.events" if self.layout.unified is not None else "memory.oom_control"
        for line in (_read(path / name) or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (bounded wait while the last one dies)."""
        for path in reversed(self._unique_dirs()):
            deadline = time.monotonic() + REMOVE_TIMEOUT
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        log.warning("cannot remove cgroup %s: %s", path, exc.strerror)
                        break
                    time.sleep(0.02)


def join(fds: list[int]) -> None:
    """In the child between fork and exec: move this process into the cgroup (each hierarchy)."""
    pid = str(os.getpid()).encode()
    for fd in fds:
        os.write(fd, pid)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise HostCapabilityError(f"cannot write {value!r} to {path}: {exc.strerror}") from exc


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
