"""The OCI runtime (runc or crun) as the container driver sees it: one small wrapper over its command line.

runc and crun share the verbs virtkit uses (create/start/state/kill [--all]/pause/resume/exec/
update/delete --force, the same `state` JSON and the same state-directory layout). Where they
differ virtkit keeps to the common ground: `update --resources FILE` (runc also reads `-`, crun
only a path), signals by number for the real-time ones (runc 1.1 knows no SIGRTMIN+N names).

Every call names virtkit's own state directory, one per runtime (`--root ROOT/run/runc`,
`ROOT/run/crun`: their state files differ), so each virtkit state root keeps its own containers
and never sees or touches anyone else's (podman's, another root's). The runtime's own failures
come out as ToolError with what it said. Which runtime a new container gets is the functional
probe's verdict (`probe.py`); the container keeps it for life (`runtime_of`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

from virtkit.drivers.base import ExecResult
from virtkit.errors import HostCapabilityError, ToolError
from virtkit.logs import get_logger

log = get_logger(__name__)

CACHE_FILE = Path("cache") / "oci-runtime.json"  # probe.py writes it

RUNC_TIMEOUT = 30.0
DEFAULT_RUNTIME = "runc"  # containers saved before the choice was recorded were runc's
CONFIG_KEY = "oci_runtime"  # in the saved runtime's config: the path of the runtime that runs it
# How runc (then crun) says `exec` found no such command in the container (runc exits 255; its
# log line escapes the quotes).
NOT_FOUND = re.compile(
    r'exec: \\?"[^"]*": (executable file not found in \$PATH|stat [^:]*: no such file or directory)'
    r"|executable file `[^`]*` not found"
)


def runtime_binary(name: str = DEFAULT_RUNTIME) -> str:
    found = shutil.which(name)
    if found is None:
        raise HostCapabilityError(
            f"{name} is not installed: containers cannot run", hint=f"apt-get install {name}"
        )
    return found


def runc_binary() -> str:
    return runtime_binary("runc")


def signal_number(name: str) -> str:
    """`name` as runc takes it: runc 1.1 knows no real-time signal names (SIGRTMIN+3 is 37 here)."""
    if name.startswith("SIGRTMIN+") and name[9:].isdigit():
        return str(int(signal.SIGRTMIN) + int(name[9:]))
    return name


class OciRuntime:
    """An OCI runtime (runc or crun) over one state directory."""

    def __init__(self, state_dir: Path, binary: str | None = None) -> None:
        self.state_dir = state_dir
        self.binary = binary or runc_binary()

    @classmethod
    def under(cls, root: Path, binary: str) -> OciRuntime:
        """`binary` with its own state directory in the virtkit state root: ROOT/run/NAME."""
        return cls(root / "run" / Path(binary).name, binary)

    @property
    def name(self) -> str:
        """The binary's name, "runc" or "crun", for messages and status."""
        return Path(self.binary).name

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state_dir), *args]

    def _run(
        self, *args: str, timeout: float = RUNC_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        import subprocess  # here: `virtkit run --rm` starts runc without it

        argv = self.argv(*args)
        log.debug("%s", " ".join(argv))
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ToolError(f"{self.name} {args[0]} did not finish within {timeout:g} s", argv=argv) from None
        if check and done.returncode != 0:
            said = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            raise ToolError(f"{self.name} {args[0]} failed: {said}", argv=argv, returncode=done.returncode,
                            stderr=done.stderr)  # fmt: skip
        return done

    def state(self, cid: str) -> dict[str, Any] | None:
        """The runtime's view ("created", "running", "paused", "stopped"), or None: unknown."""
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
        """Run `argv` in the running container; its exit code and output (the runtime's own failures: 255)."""
        import subprocess  # here: `virtkit run --rm` starts runc without it

        command = self.argv("exec", cid, *argv)
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout, check=False,
                                     stdin=subprocess.DEVNULL)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"{argv[0]} did not finish within {timeout:g} s in {cid}") from exc
        if done.returncode != 0 and NOT_FOUND.search(done.stderr.decode(errors="replace")):
            name = cid.rsplit(".", 1)[0]  # a container id is NAME.UUID8
            said = f"{argv[0]}: command not found in instance {name}\n"
            return ExecResult(127, b"", said.encode())  # the shell's code, as the VM driver's
        return ExecResult(done.returncode, done.stdout, done.stderr)

    def update(self, cid: str, resources: dict[str, Any]) -> None:
        """Change a running container's cgroup limits (an OCI linux.resources object)."""
        import subprocess  # here: `virtkit run --rm` starts runc without it
        import tempfile

        with tempfile.NamedTemporaryFile("w", prefix="virtkit-resources-", suffix=".json") as file:
            json.dump(resources, file)
            file.flush()
            argv = self.argv("update", "--resources", file.name, cid)
            done = subprocess.run(argv, capture_output=True, text=True, timeout=RUNC_TIMEOUT, check=False)
        if done.returncode != 0:
            said = done.stderr.strip()
            raise ToolError(f"{self.name} update failed: {said}", argv=argv, returncode=done.returncode)


Runc = OciRuntime  # the name it had when runc was the only runtime


def runtime_of(root: Path, config: Mapping[str, Any]) -> OciRuntime:
    """The runtime that runs the container whose saved runtime config is `config`: the one recorded
    when it was made (runc for containers saved before that was recorded), wherever it lives now."""
    recorded = str(config.get(CONFIG_KEY) or "")
    if recorded and Path(recorded).is_file():
        return OciRuntime.under(root, recorded)
    return OciRuntime.under(root, runtime_binary(Path(recorded).name if recorded else DEFAULT_RUNTIME))


def chosen(root: Path) -> OciRuntime:
    """The runtime a new container gets, for the lean path (`virtkit run --rm`): the probe's cached
    winner while its binary and the kernel are those the probe saw (a stat, no process), else the
    probe itself (probe.py), which revalidates the whole key — as every `create` does."""
    try:
        document = json.loads((root / CACHE_FILE).read_text())
        key = document["key"]
        winner = next(t for t in document["trials"] if t.get("ok"))
        seen = next(r for r in key["runtimes"] if r["path"] == winner["path"])
        info = os.stat(winner["path"])
        now = [info.st_ino, info.st_size, info.st_mtime_ns]
        same = now == [seen["inode"], seen["size"], seen["mtime_ns"]]
        if same and key["kernel"] == os.uname().release:
            return OciRuntime.under(root, str(winner["path"]))
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        pass
    from virtkit.drivers.oci.probe import select_runtime

    return OciRuntime.under(root, select_runtime(root))

