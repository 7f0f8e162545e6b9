"""A running VM's counters: CPU time and memory of its QEMU, bytes its guest read and wrote.

CPU time and memory are the VM's cgroup's (drivers/cgroup.py: QEMU's every thread, the guest's
vCPUs among them); a VM started without a cgroup falls back to QEMU's own process (/proc/PID/stat
utime+stime, resident set from /proc/PID/statm). Disk bytes are QEMU's block accounting of the
guest's devices (QMP query-blockstats: rd_bytes, wr_bytes of each block backend), so they count
what the guest asked of its disks, whatever the host's page cache made of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from virtkit.drivers.base import Stats
from virtkit.drivers.cgroup import Cgroup
from virtkit.drivers.qemu.monitor import Monitor
from virtkit.errors import VirtkitError
from virtkit.logs import get_logger

log = get_logger(__name__)

QMP_TIMEOUT = 3.0


def block_bytes(answer: object) -> tuple[int | None, int | None]:
    """(read, written) summed over the block backends of a query-blockstats answer."""
    if not isinstance(answer, list):
        return None, None
    read = written = 0
    counted = False
    for entry in answer:
        stats = entry.get("stats") if isinstance(entry, dict) else None
        if not isinstance(stats, dict):
            continue
        rd, wr = stats.get("rd_bytes"), stats.get("wr_bytes")
        if isinstance(rd, int) and isinstance(wr, int):
            read, written, counted = read + rd, written + wr, True
    return (read, written) if counted else (None, None)


def process_usage(pid: int, proc: Path = Path("/proc")) -> tuple[float | None, int | None]:
    """(CPU seconds, resident bytes) of one process; None where /proc does not say."""
    cpu: float | None = None
    memory: int | None = None
    try:
        stat = (proc / str(pid) / "stat").read_text()
        # the command may hold spaces and parentheses: the fields start after the last ")"
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages = int((proc / str(pid) / "statm").read_text().split()[1])
        memory = pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return cpu, memory


def vm_stats(name: str, pid: int, cgroup: str | None, monitor: Path) -> Stats:
    """The counters of the VM whose QEMU is `pid` (in `cgroup`, if any), its QMP socket `monitor`."""
    if cgroup:
        group = Cgroup(cgroup)
        cpu, memory = group.cpu_seconds(), group.memory_bytes()
    else:
        cpu, memory = process_usage(pid)
    try:
        answer = Monitor(monitor, name=name, connect_timeout=QMP_TIMEOUT, timeout=QMP_TIMEOUT).execute(
            "query-blockstats"
        )
    except VirtkitError as exc:
        log.info("%s: no block statistics: %s", name, exc)
        answer = None
    read, written = block_bytes(answer)
    return Stats(cpu, memory, read, written)
