"""One boot of a VM: what `start` records about it, and the bounded watch for the guest's readiness.

`start` writes a `BootRecord` (boot.json in the instance directory): the spec QEMU runs with, when
it was started, where this boot's output begins in the console and runtime logs, and how long the
spawn took. `watch_ready` then follows this boot's output for the phases users see:

    spawn    QEMU up (its monitor answers)
    kernel   the guest's first console output
    ready    the guest's readiness marker: on its virtio-serial readiness port (the file's mtime
             dates it exactly) or, without virtio, on the serial console; for an image whose
             agent is qemu-guest-agent (`spec.ready_agent`), the agent's first answer to a sync
             (Debian's starts once cloud-init's first stages are done); for an image with
             neither, its first console output

All phases are seconds since `start` began, so a later virtkit process can wait for a VM another
one started.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtkit.drivers.qemu.guestagent import SyncProbe
from virtkit.drivers.qemu.spec import VmSpec
from virtkit.errors import StateError, VirtkitError
from virtkit.store import atomic_write

log = logging.getLogger(__name__)

POLL = 0.02  # seconds between looks at the guest's output
AGENT_POLL = 0.25  # the longest wait for the guest agent's answer in one look
CHUNK = 1 << 16


@dataclass
class BootRecord:
    spec: VmSpec
    started_at: float  # wall clock (comparable with file mtimes and across processes)
    console_offset: int  # where this boot's output starts in the console log
    log_offset: int  # where this boot's messages start in the runtime log
    phases: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "started_at": self.started_at,
            "console_offset": self.console_offset,
            "log_offset": self.log_offset,
            "phases": self.phases,
        }

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n", mode=0o600)

    @classmethod
    def load(cls, path: Path) -> BootRecord | None:
        """The record of the last boot, or None when the VM was never started (or it is unreadable)."""
        try:
            data = json.loads(path.read_text())
            return cls(
                spec=VmSpec.from_dict(data["spec"]),
                started_at=float(data["started_at"]),
                console_offset=int(data["console_offset"]),
                log_offset=int(data["log_offset"]),
                phases={str(k): float(v) for k, v in data.get("phases", {}).items()},
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable boot record %s: %s", path, exc)
            return None


class LogFollower:
    """Reads what is appended to a file from an offset on, and finds a marker across reads."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.offset = offset
        self.seen = 0  # bytes read so far
        self._carry = b""

    def grew(self) -> bool:
        try:
            return self.path.stat().st_size > self.offset
        except FileNotFoundError:
            return False

    def find(self, marker: bytes) -> bool:
        """Whether `marker` was written since the offset (reads only what is new)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset + self.seen)
                while chunk := handle.read(CHUNK):
                    self.seen += len(chunk)
                    window = self._carry + chunk
                    if marker in window:
                        return True
                    self._carry = window[-len(marker) :]
        except FileNotFoundError:
            pass
        return False


def _port_ready_at(spec: VmSpec, marker: bytes) -> float | None:
    """When the guest wrote the marker to its readiness port (QEMU truncates that file at start)."""
    if spec.ready_file is None:
        return None
    path = Path(spec.ready_file)
    try:
        if marker in path.read_bytes():
            return path.stat().st_mtime
    except FileNotFoundError:
        pass
    return None


class _Watch:
    """What one readiness watch follows: the console log, and the marker or the guest agent."""

    def __init__(self, boot: BootRecord) -> None:
        spec = boot.spec
        self.spec = spec
        self.console = LogFollower(Path(spec.console_log), boot.console_offset)
        self.marker = (spec.ready_marker or "").encode()
        agent = spec.agent_socket if spec.ready_agent else None
        self.probe = SyncProbe(Path(agent)) if agent else None

    def ready_at(self, kernel_started: bool) -> float | None:
        """When the guest became ready (wall clock), or None when it is not yet."""
        if self.probe is not None:
            return time.time() if self.probe.answered(AGENT_POLL) else None
        if self.marker:
            at = _port_ready_at(self.spec, self.marker)
            return at if at is not None else (time.time() if self.console.find(self.marker) else None)
        return time.time() if kernel_started else None

    def waiting_for(self) -> str:
        if self.probe is not None:
            return "its guest agent to answer"
        return "its readiness marker" if self.marker else "its console output"

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()


def watch_ready(
    boot: BootRecord, timeout: float, alive: Callable[[], bool], why_dead: Callable[[], str]
) -> dict[str, float]:
    """Wait up to `timeout` s for this boot's readiness; the phases, in seconds since start.

    VirtkitError when QEMU dies first (with its last words) or the time runs out, saying what
    the console showed.
    """
    spec = boot.spec
    watch = _Watch(boot)
    deadline = time.monotonic() + timeout
    phases = {k: v for k, v in boot.phases.items() if k == "spawn"}
    try:
        while True:
            if "kernel" not in phases and watch.console.grew():
                phases["kernel"] = time.time() - boot.started_at
            ready_at = watch.ready_at("kernel" in phases)
            if ready_at is not None:
                phases["ready"] = max(ready_at - boot.started_at, 0.0)
                phases.setdefault("kernel", phases["ready"])
                return phases
            if not alive():
                raise StateError(
                    f"{spec.name} stopped before it was ready: {why_dead()}",
                    hint=f"its console log is {spec.console_log}",
                )
            if time.monotonic() >= deadline:
                raise VirtkitError(
                    f"{spec.name} was not ready within {timeout:g} s, waiting for {watch.waiting_for()} "
                    f"({'its kernel started' if 'kernel' in phases else 'no console output yet'})",
                    hint=f"the VM is still running; its console log is {spec.console_log}",
                )
            time.sleep(POLL)
    finally:
        watch.close()
