"""Whether a process has ended, as /proc tells it: for waits that must not go on before the
process has let go of its files (an image lock on a qcow2, a socket, a mount).

A process is over when it is reaped, or when its leader is a zombie with no thread left. A zombie
leader alone is not enough: when a multi-threaded process (QEMU, qemu-storage-daemon) is killed,
its leader can end before its other threads, and until the last of them has gone the files they
share stay open: in a loop of FUSE export, end and `qemu-io` on one qcow2, `qemu-io` was refused
the write lock in 1-7% of rounds while the daemon was waited for as a zombie leader alone.
"""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

__all__ = ["ended", "exited", "wait"]


def ended(pid: int) -> bool:
    """Whether process `pid` has ended, all its threads (a zombie waiting for its parent counts)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]  # the name field may hold spaces and ")"
    return state in ("Z", "X", "x") and threads == [str(pid)]


def exited(pidfd: int, timeout: float) -> bool:
    """Whether the process behind `pidfd` exited within `timeout` (a pidfd polls readable on exit)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """`proc`'s exit status, waited for at most `timeout` seconds (subprocess.TimeoutExpired then),
    woken when it exits: `Popen.wait(timeout)` polls with sleeps of up to 50 ms, which a short
    compressor run or the end of a long one pays in full."""
    if proc.returncode is not None:
        return proc.returncode
    pidfd = os.pidfd_open(proc.pid)  # not reaped yet: the PID is still this child's
    try:
        if not exited(pidfd, timeout):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()
