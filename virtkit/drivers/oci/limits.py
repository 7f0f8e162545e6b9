"""A container's settings beyond CPUs and memory, read from its instance config and checked against
this host: `--cpu-set`, `--disk-iops`/`--disk-bandwidth`, `--privileged`, the image's user.

- cpu_set: host CPUs the container may run on ("0", "0-1", "0,2"), each one this host has online.
- disk throttles: on the whole disk that holds the container's upper layer (what it writes goes
  there); cgroup v1 throttles direct I/O only — buffered writes are flushed by the kernel outside
  the container's cgroup — while cgroup v2 throttles both. An I/O *weight* is not offered: on v1 it
  needs the BFQ scheduler's blkio.bfq.weight, which this kind of host (mq-deadline) does not have.
- privileged: every capability its caller has (runc cannot grant one the caller lacks), no seccomp,
  no masked paths, every device; said plainly at launch.
- the OCI image's `User`: "uid", "uid:gid", or names looked up in the image's own /etc/passwd and
  /etc/group, read inside the image's tree (inroot.py) — never the host's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from virtkit.drivers.oci.bundle import ALL_CAPS
from virtkit.drivers.oci.inroot import resolve
from virtkit.drivers.throttle import disk_throttle
from virtkit.errors import SpecError

ONLINE_CPUS = Path("/sys/devices/system/cpu/online")
STATUS = Path("/proc/self/status")


def parse_cpu_list(text: str) -> set[int]:
    """"0-2,4" -> {0, 1, 2, 4}; ValueError when it is not such a list."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(part)
        first, last = int(low), int(high or low)
        if last < first:
            raise ValueError(part)
        cpus.update(range(first, last + 1))
    return cpus


def cpu_set(config: Mapping[str, str], online: Path = ONLINE_CPUS) -> str | None:
    text = (config.get("cpu_set") or "").strip()
    if not text:
        return None
    have = parse_cpu_list(online.read_text().strip())
    try:
        wanted = parse_cpu_list(text)
    except ValueError:
        raise SpecError(f"invalid CPU set {text!r}: expected CPU numbers such as 0, 0-1 or 0,2") from None
    missing = sorted(wanted - have)
    if missing:
        listed = online.read_text().strip()
        raise SpecError(f"invalid CPU set {text!r}: this host has no CPU {missing[0]} (online: {listed})")
    return ",".join(str(cpu) for cpu in sorted(wanted))


def whole_disk(path: Path, sysfs: Path = Path("/sys/dev/block")) -> str:
    """"MAJOR:MINOR" of the disk holding `path` (a partition's parent disk: throttles are per disk)."""
    info = os.stat(path)
    device = f"{os.major(info.st_dev)}:{os.minor(info.st_dev)}"
    node = sysfs / device
    if not node.exists():
        raise SpecError(f"the disk under {path} ({device}) is not a block device: it cannot be throttled",
                        hint="disk throttles need the state root on a real disk")  # fmt: skip
    if (node / "partition").exists():
        return (node.resolve().parent / "dev").read_text().strip()
    return device


def disk(config: Mapping[str, str], upper: Path) -> tuple[str, int | None, int | None]:
    """(disk, IOPS, bytes per second) for the container's throttles ("" disk: none asked)."""
    iops, bps = disk_throttle(config)
    if iops is None and bps is None:
        return "", None, None
    where = upper if upper.exists() else upper.parent
    while not where.exists():
        where = where.parent
    return whole_disk(where), iops, bps


def caller_caps(status: Path = STATUS) -> tuple[str, ...]:
    """The capabilities in this process's bounding set, by name: what a privileged container gets."""
    for line in status.read_text().splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
            return tuple(name for bit, name in enumerate(ALL_CAPS) if mask >> bit & 1)
    return ALL_CAPS


def privileged(config: Mapping[str, str]) -> bool:
    value = config.get("privileged", "")
    if value not in ("", "true", "false"):
        raise SpecError(f"invalid privileged setting {value!r}: expected true or false")
    return value == "true"


def image_user(text: str, rootfs: Path) -> tuple[int, int]:
    """The (uid, gid) an OCI image's `User` names ("" is root)."""
    user, _, group = text.strip().partition(":")
    if not user:
        return 0, 0
    uid, gid = _lookup(rootfs, "etc/passwd", user, 2)
    if group:
        gid = _lookup(rootfs, "etc/group", group, 2)[0]
    return uid, gid


def _lookup(rootfs: Path, table: str, name: str, id_field: int) -> tuple[int, int]:
    """(id, primary gid) of `name` in the image's passwd/group file; a number is taken as it is."""
    if name.isdigit():
        return int(name), int(name) if table == "etc/group" else _primary_gid(rootfs, int(name))
    path = resolve(rootfs, "/" + table)
    lines = path.read_text(errors="replace").splitlines() if path is not None and path.is_file() else []
    for line in lines:
        fields = line.split(":")
        if len(fields) > id_field + 1 and fields[0] == name and fields[id_field].isdigit():
            gid = fields[3] if table == "etc/passwd" and len(fields) > 3 else fields[id_field]
            return int(fields[id_field]), int(gid) if gid.isdigit() else 0
    raise SpecError(f"the image's user {name!r} is not in its /{table}", hint="run it with a numeric user")


def _primary_gid(rootfs: Path, uid: int) -> int:
    path = resolve(rootfs, "/etc/passwd")
    for line in path.read_text(errors="replace").splitlines() if path is not None and path.is_file() else []:
        fields = line.split(":")
        if len(fields) > 3 and fields[2] == str(uid) and fields[3].isdigit():
            return int(fields[3])
    return 0  # not in the image's passwd: group root, as Docker and podman
