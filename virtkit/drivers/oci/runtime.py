"""The OCI runtime (runc) as the container driver sees it: one small wrapper over its command line.

Every call names virtkit's own state directory (`runc --root ROOT/run/runc`), so each virtkit
state root keeps its own containers and never sees or touches anyone else's (podman's, another
root's). runc's own failures come out as ToolError with what runc said.

crun is not used on this kind of host: crun 1.8 refuses hybrid cgroup layouts (DESIGN.md); runc
1.1 works on v1, hybrid and v2.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from virtkit.drivers.base import ExecResult
from virtkit.errors import HostCapabilityError, ToolError

log = logging.getLogger(__name__)

RUNC_TIMEOUT = 30.0


def runc_binary() -> str:
    found = shutil.which("runc")
    if found is None:
        raise HostCapabilityError("runc is not installed: containers cannot run", hint="apt-get install runc")
    return found


def signal_number(name: str) -> str:
    """`name` as runc takes it: runc 1.1 knows no real-time signal names (SIGRTMIN+3 is 37 here)."""
    if name.startswith("SIGRTMIN+") and name[9:].isdigit():
        return str(int(signal.SIGRTMIN) + int(name[9:]))
    return name


class Runc:
    """runc over one state directory."""

    def __init__(self, state_dir: Path, binary: str | None = None) -> None:
        self.state_dir = state_dir
        self.binary = binary or runc_binary()

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state_dir), *args]

    def _run(
        self, *args: str, timeout: float = RUNC_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = self.argv(*args)
        log.debug("%s", " ".join(argv))
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ToolError(f"runc {args[0]} did not finish within {timeout:g} s", argv=argv) from None
        if check and done.returncode != 0:
            said = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            raise ToolError(f"runc {args[0]} failed: {said}", argv=argv, returncode=done.returncode,
                            stderr=done.stderr)  # fmt: skip
        return done

    def state(self, cid: str) -> dict[str, Any] | None:
        """runc's view of the container ("created", "running", "paused", "stopped"), or None: unknown."""
        if not (self.state_dir / cid).exists():
            return None
        done = self._run("state", cid, check=False)
        if done.returncode != 0:
            return None
        state: dict[str, Any] = json.loads(done.stdout)
        return state

    def start(self, cid: str) -> None:
        self._run("start", cid)

    def kill(self, cid: str, signal: str, *, all_processes: bool = False) -> None:
        """Send `signal` to the container's init (or, with `all_processes`, to every process in it)."""
        self._run("kill", *(["--all"] if all_processes else []), cid, signal_number(signal), check=False)

    def pause(self, cid: str) -> None:
        self._run("pause", cid)

    def resume(self, cid: str) -> None:
        self._run("resume", cid)

    def delete(self, cid: str) -> None:
        """Forget the container (killing it if it still runs); nothing to delete is fine."""
        if (self.state_dir / cid).exists():
            self._run("delete", "--force", cid, check=False)

    def exec(self, cid: str, argv: Sequence[str], timeout: float) -> ExecResult:
        """Run `argv` in the running container; its exit code and output (runc's own failures: 255)."""
        command = self.argv("exec", cid, *argv)
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"{argv[0]} did not finish within {timeout:g} s in {cid}") from exc
        return ExecResult(done.returncode, done.stdout, done.stderr)

    def update(self, cid: str, resources: dict[str, Any]) -> None:
        """Change a running container's cgroup limits (an OCI linux.resources object)."""
        argv = self.argv("update", "--resources", "-", cid)
        done = subprocess.run(argv, input=json.dumps(resources), capture_output=True, text=True,
                              timeout=RUNC_TIMEOUT, check=False)  # fmt: skip
        if done.returncode != 0:
            said = done.stderr.strip()
            raise ToolError(f"runc update failed: {said}", argv=argv, returncode=done.returncode)
