"""conmon, the per-container monitor: it holds the container's stdio, writes its log and its exit
code, so that no Python process stays behind per container.

The start handshake is podman's (libpod/oci_conmon_common.go): two SOCK_SEQPACKET
socketpairs named to conmon in _OCI_SYNCPIPE and _OCI_STARTPIPE; conmon waits for one byte on the
start pipe, daemonizes (its first process exits at once, which says nothing about success), runs
`runc create`, and writes one JSON line on the sync pipe: {"data": PID} or {"data": -1,
"message": what runc said}; an empty read means conmon itself died. conmon never runs `runc
start` (the caller does) nor `runc delete`. When the container's PID 1 exits, conmon writes the
exit status (decimal, no newline; 128+N for a signal) to EXIT_DIR/CID.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from virtkit.drivers.oci.runtime import Runc
from virtkit.errors import HostCapabilityError, ToolError

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0


@dataclass(frozen=True)
class MonitorFiles:
    """conmon's files for one container: its log (where `virtkit console --log` looks), the rest in
    the bundle directory."""

    bundle: Path
    log: Path  # k8s-file: "TIME stdout|stderr F|P text" lines

    @property
    def exits(self) -> Path:
        return self.bundle / "exits"

    @property
    def conmon_pid(self) -> Path:
        return self.bundle / "conmon.pid"

    @property
    def container_pid(self) -> Path:
        return self.bundle / "pidfile"

    @property
    def runtime_log(self) -> Path:
        return self.bundle / "oci-log"


def conmon_argv(cid: str, name: str, files: MonitorFiles, runc: Runc, *, terminal: bool = False) -> list[str]:
    conmon = shutil.which("conmon")
    if conmon is None:
        raise HostCapabilityError(
            "conmon is not installed: containers cannot run", hint="apt-get install conmon"
        )
    return [
        conmon, "--api-version", "1", "-c", cid, "-u", cid, "-n", name,
        "-r", runc.binary, "-b", str(files.bundle),
        "-p", str(files.container_pid), "-P", str(files.conmon_pid),
        "--exit-dir", str(files.exits), "--full-attach", "-l", f"k8s-file:{files.log}",
        "--log-level", "warn",
        "--runtime-arg", "--root", "--runtime-arg", str(runc.state_dir),
        "--runtime-arg", "--log-format=json", "--runtime-arg", "--log", f"--runtime-arg={files.runtime_log}",
        "--no-new-keyring",
        # A terminal: conmon holds the pty's master end and logs what the container writes to it
        # (a systemd init writes only to /dev/console, which runc makes for a terminal alone).
        # and passes what `virtkit console` sends to it (--stdin), kept open between attachments.
        *(("--terminal", "--stdin", "--leave-stdin-open") if terminal else ()),
    ]  # fmt: skip


def launch(
    cid: str,
    name: str,
    files: MonitorFiles,
    runc: Runc,
    timeout: float = START_TIMEOUT,
    *,
    terminal: bool = False,
    created: Callable[[int], None] | None = None,
) -> int:
    """Create the container under a new conmon and start it; the container's PID (as the host sees it).
    `created` is called with that PID between create and start: its namespaces exist, its process
    has not run yet."""
    files.exits.mkdir(exist_ok=True)
    argv = conmon_argv(cid, name, files, runc, terminal=terminal)
    sync_parent, sync_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    start_parent, start_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pipes = {"_OCI_SYNCPIPE": str(sync_child.fileno()), "_OCI_STARTPIPE": str(start_child.fileno())}
    env = {**os.environ, **pipes}
    try:
        child = subprocess.Popen(
            argv, env=env, cwd=files.bundle, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=(sync_child.fileno(), start_child.fileno()),
            start_new_session=True,
        )  # fmt: skip
        sync_child.close()
        start_child.close()
        start_parent.sendall(b"\0")
        _out, err = child.communicate(timeout=timeout)
        sync_parent.settimeout(timeout)
        message = sync_parent.recv(65536)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"conmon could not start {name}: {exc}", argv=argv) from exc
    finally:
        for end in (sync_parent, sync_child, start_parent, start_child):
            end.close()
    pid = _container_pid(message, name, err.decode(errors="replace"))
    if created is not None:
        created(pid)
    runc.start(cid)
    log.info("%s: container pid %d under conmon", name, pid)
    return pid


def _container_pid(message: bytes, name: str, conmon_stderr: str) -> int:
    if not message:
        raise ToolError(f"conmon died before it created {name}: {conmon_stderr.strip() or 'no message'}")
    try:
        data = json.loads(message)
        pid = int(data["data"])
    except (ValueError, KeyError, TypeError):
        raise ToolError(f"unexpected answer from conmon for {name}: {message[:200]!r}") from None
    if pid <= 0:
        said = str(data.get("message", "")).strip()
        raise ToolError(f"the OCI runtime could not create {name}: {said or 'no message'}")
    return pid


def exit_status(files: MonitorFiles, cid: str) -> int | None:
    """The container's exit status as conmon recorded it (None: it has not exited, or conmon died)."""
    try:
        text = (files.exits / cid).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def conmon_alive(files: MonitorFiles, cid: str) -> bool:
    """Whether this container's conmon still runs (its pidfile, guarded by its command line)."""
    try:
        pid = int(files.conmon_pid.read_text().strip())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return b"conmon" in args[0] and cid.encode() in args
