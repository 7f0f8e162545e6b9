"""The QEMU process of a VM: spawned detached, found again through its pidfile, killed with bounded waits.

No Python process stays behind per VM: `spawn` starts QEMU in a new session with no terminal, its
stdout and stderr appended to the runtime log, and QEMU writes its own pidfile. Any later virtkit
process finds it through that pidfile, trusting the PID only while /proc/PID/cmdline holds the
instance's UUID (a PID the kernel reused for something else is not our VM).

QEMU removes its pidfile when it exits cleanly (guest power-off, `quit`, SIGTERM); a pidfile left
naming a dead process means QEMU was killed or crashed, and the tail of the runtime log says why
when QEMU had the chance to say anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from virtkit import procs
from virtkit.drivers.cgroup import join
from virtkit.drivers.qemu.runas import RunAs, drop_privileges
from virtkit.errors import HostCapabilityError

log = logging.getLogger(__name__)

POLL = 0.02  # seconds between looks at /proc while waiting for a process to go
KILL_TIMEOUT = 10.0
TAIL_LINES = 5

# QEMU processes this Python process started: polled, so they are reaped rather than left as zombies
# (one small object per start, kept for the exit status).
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    cgroup_fds: Sequence[int] = (),
    user: RunAs | None = None,
    pass_fds: Iterable[int] = (),
) -> int:
    """Start `argv` detached (own session, stdin from /dev/null, output appended to `log_path`).

    Between fork and exec the child joins its cgroup (through `cgroup_fds`, files of cgroup.procs
    the caller opened) and then becomes `user`, so QEMU never runs a single instruction unconfined.
    Files it creates are private to it (umask 077). `pass_fds` stay open in it, at their numbers
    (the tap descriptors its argv names).
    """
    fds = list(cgroup_fds)

    def confine() -> None:  # runs in the child: nothing here may take a lock or allocate much
        join(fds)
        if user is not None:
            drop_privileges(user)

    with log_path.open("ab") as output:
        try:
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
                close_fds=True,
                umask=0o077,
                pass_fds=tuple(pass_fds),
                preexec_fn=confine if fds or user is not None else None,
            )
        except FileNotFoundError:
            package = "qemu-system-arm" if "aarch64" in argv[0] else "qemu-system-x86"
            raise HostCapabilityError(
                f"{argv[0]} is not installed", hint=f"install it: apt-get install {package}"
            ) from None
        except subprocess.SubprocessError as exc:  # the confinement failed in the child
            raise HostCapabilityError(f"cannot confine {argv[0]}: {exc}") from exc
    _children[child.pid] = child
    log.debug("spawned %s as pid %d", argv[0], child.pid)
    return child.pid


def exit_code(pid: int) -> int | None:
    """The exit status of a child this process spawned, once it has exited (None otherwise)."""
    child = _children.get(pid)
    return None if child is None else child.poll()


def read_pid(pidfile: Path) -> int | None:
    """The PID a pidfile names, or None when there is no pidfile or it holds no number."""
    try:
        text = pidfile.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        child.poll()  # reaps it once it exited; kept, so exit_code can still tell the status
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int) -> bool:
    """Whether `pid` is a live process: until all its threads have ended (virtkit/procs.py: a
    zombie leader whose threads still close the disks is not gone yet); our own are reaped."""
    _reap(pid)
    return not procs.ended(pid)


def owns(pid: int, uuid: str) -> bool:
    """Whether `pid` is alive and its command line holds `uuid` as one argument (the PID-reuse guard)."""
    if not uuid or not alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return uuid.encode() in args


def running_pid(pidfile: Path, uuid: str) -> int | None:
    """The PID of the instance's live QEMU, or None (no pidfile, or its PID is dead or someone else)."""
    pid = read_pid(pidfile)
    return pid if pid is not None and owns(pid, uuid) else None


def wait_gone(pid: int, uuid: str, timeout: float) -> bool:
    """Wait up to `timeout` s for the instance's process to exit completely; whether it did.

    Once it is ours (`uuid` in its command line) the PID is followed to its end, not its
    command line: a dying process loses its command line before it lets go of its files.
    """
    return not owns(pid, uuid) or _wait_dead(pid, timeout)


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def kill(pid: int, uuid: str, timeout: float = KILL_TIMEOUT) -> bool:
    """SIGKILL the instance's QEMU (only if `pid` is still it) and wait for it to go; whether it went."""
    if not owns(pid, uuid):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    gone = _wait_dead(pid, timeout)
    if not gone:
        log.warning("pid %d still there %g s after SIGKILL", pid, timeout)
    return gone


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def tail(path: Path, offset: int = 0, lines: int = TAIL_LINES) -> str:
    """The last `lines` non-empty lines of `path` written after byte `offset`."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, offset))
            data = handle.read()
    except FileNotFoundError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def death_reason(log_path: Path, offset: int = 0) -> str:
    """Why QEMU died, from what it wrote to its log since `offset` (its timestamps removed)."""
    said = tail(log_path, offset)
    if not said:
        return "QEMU died without a message: killed (SIGKILL) or crashed"
    return "\n".join(without_timestamp(line) for line in said.splitlines())


def without_timestamp(line: str) -> str:
    """The line without the timestamp `-msg timestamp=on` puts first ("2026-...Z qemu-system-...")."""
    first, _, rest = line.partition(" ")
    return rest if rest and first[:4].isdigit() and first.endswith("Z") else line
