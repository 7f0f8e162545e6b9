"""Checks of the CPU and memory an instance asks for, against what any instance can have on this host.

Kept free of pydantic: `virtkit run` checks its limits with these too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtkit.errors import HostCapabilityError, SpecError
from virtkit.units import MiB, format_size

if TYPE_CHECKING:
    from virtkit.store import Store

MIN_MEMORY = 32 * MiB
MIN_CONTAINER_CPUS = 0.01


def host_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise HostCapabilityError("cannot read the host's memory size from /proc/meminfo")


def check_resources(kind: str, cpus: float, memory: int) -> None:
    """SpecError for CPU and memory sizes no instance can have on this host."""
    if cpus <= 0:
        raise SpecError(f"invalid CPU count {cpus:g}: must be more than 0")
    if kind == "vm" and cpus != int(cpus):
        raise SpecError(f"invalid CPU count {cpus:g}: a VM has a whole number of vCPUs")
    if kind == "container":
        # A container's CPUs are a CFS quota of host CPU time: the kernel takes no quota under 1 ms
        # a 100 ms period, and more than the host has is no limit at all (Docker refuses it too).
        host = os.cpu_count() or 1
        if not MIN_CONTAINER_CPUS <= cpus <= host:
            raise SpecError(
                f"invalid CPU share {cpus:g}: from {MIN_CONTAINER_CPUS} to {host} (the CPUs this host has)",
                hint="--cpus 0.5 is half a host CPU",
            )
    if memory < MIN_MEMORY:
        raise SpecError(f"memory {format_size(memory)} is too small: at least {format_size(MIN_MEMORY)}")
    total = host_memory()
    if memory > total:
        raise SpecError(
            f"memory {format_size(memory)} is more than this host has ({format_size(total)})",
            hint="ask for less with --memory",
        )


def host_usage(root: Path, store: Store) -> dict[str, Any]:
    """What the host has (CPUs, memory, the state root's disk) and what its instances are given:
    `GET /1.0/host/resources`. "given" counts every defined instance, running or not."""
    from virtkit.model import InstanceRecord

    records = store.list(InstanceRecord)
    disk = os.statvfs(root)
    return {
        "cpus": {"total": os.cpu_count() or 1, "given": sum(r.cpus for r in records)},
        "memory": {"total": host_memory(), "available": _available(),
                   "given": sum(r.memory for r in records)},
        "disk": {"total": disk.f_blocks * disk.f_frsize, "free": disk.f_bavail * disk.f_frsize},
        "instances": len(records),
    }


def _available(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0
