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
from pathlib import Path

__all__ = ["ended"]


def ended(pid: int) -> bool:
    """Whether process `pid` has ended, all its threads (a zombie waiting for its parent counts)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]  # the name field may hold spaces and ")"
    return state in ("Z", "X", "x") and threads == [str(pid)]
