"""A container's counters, read from its cgroup: CPU time and memory (drivers/cgroup.py) and the
bytes its processes read from and wrote to block devices.

Disk bytes come from the block I/O controller: on cgroup v2 `io.stat` (rbytes=, wbytes= per
device); on v1 the blkio hierarchy's `blkio.throttle.io_service_bytes_recursive` ("MAJ:MIN Read N"
lines, the counters runc and Docker report too; `_recursive`, since a system container's init makes
cgroups below its own). Every device's bytes are summed. Under v1 the kernel charges a write to the
cgroup only when it goes to the device in the writer's own context (direct I/O, or a sync); writes
left in the page cache are written back later by the kernel and charged to nobody, so a
container's written bytes under v1 can stay at 0 while it writes files. Nothing is invented: a file
that is not there gives None.
"""

from __future__ import annotations

from pathlib import Path

from virtkit.drivers.base import Stats
from virtkit.drivers.cgroup import Cgroup

V1_IO_FILES = ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_service_bytes")


def parse_v1_bytes(text: str) -> tuple[int, int]:
    """(read, written) summed over the devices of a v1 blkio io_service_bytes file."""
    read = written = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3 or not fields[2].isdigit():
            continue  # the "Total N" line, or something unexpected
        if fields[1] == "Read":
            read += int(fields[2])
        elif fields[1] == "Write":
            written += int(fields[2])
    return read, written


def parse_v2_bytes(text: str) -> tuple[int, int]:
    """(read, written) summed over the devices of a v2 io.stat file."""
    read = written = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if value.isdigit():
                if key == "rbytes":
                    read += int(value)
                elif key == "wbytes":
                    written += int(value)
    return read, written


def blkio_root(mounts_text: str | None = None) -> Path | None:
    """Where the v1 blkio hierarchy is mounted, if it is (from /proc/self/mounts)."""
    from virtkit.host.cgroups import parse_mounts, read_mounts

    mounts = read_mounts(Path("/")) if mounts_text is None else parse_mounts(mounts_text)
    for mount in mounts:
        if mount.fstype == "cgroup" and "blkio" in mount.options:
            return Path(mount.target)
    return None


def disk_bytes(cgroup: Cgroup, blkio: Path | None) -> tuple[int | None, int | None]:
    """(read, written) bytes of `cgroup`'s processes on block devices; None where not counted."""
    if cgroup.layout.unified is not None:
        text = _read(cgroup.layout.unified / cgroup.relative / "io.stat")
        return (None, None) if text is None else parse_v2_bytes(text)
    if blkio is None:
        return None, None
    for name in V1_IO_FILES:
        text = _read(blkio / cgroup.relative / name)
        if text is not None:
            return parse_v1_bytes(text)
    return None, None


def cgroup_stats(cgroup: Cgroup, blkio: Path | None = None) -> Stats:
    """The counters of `cgroup` (None for those its files do not hold: all of them once it is
    gone). `blkio`: the v1 blkio hierarchy, looked up when not given."""
    if blkio is None and cgroup.layout.unified is None:
        blkio = blkio_root()
    read, written = disk_bytes(cgroup, blkio)
    return Stats(cgroup.cpu_seconds(), cgroup.memory_bytes(), read, written)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
