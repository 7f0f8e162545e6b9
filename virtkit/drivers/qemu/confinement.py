"""Around one start of QEMU: its cgroup made with the VM's limits, its files handed to its user; and
the limits changed while it runs.

The instance directory becomes root-owned, group QEMU's user, mode 1770: QEMU can make its
sockets, pidfile and logs there, and the sticky bit keeps it from replacing the files root wrote
(runtime.json, boot.json), which a later start trusts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.drivers.base import InstancePaths
from virtkit.drivers.cgroup import Cgroup, Limits, close_all
from virtkit.drivers.qemu import runas
from virtkit.drivers.qemu.spec import VmSpec
from virtkit.errors import HostCapabilityError, StateError
from virtkit.units import format_size

if TYPE_CHECKING:  # the monitor's module loads asyncio: imported by whoever makes one
    from virtkit.drivers.qemu.monitor import Monitor

INSTANCE_DIR_MODE = 0o1770


def limits_of(spec: VmSpec) -> Limits:
    return Limits(cpu_quota=spec.cpu_quota, cpu_period=spec.cpu_period, memory_max=spec.memory_max)


def user_of(spec: VmSpec) -> runas.RunAs | None:
    if spec.run_as is None:
        return None
    who = runas.lookup(spec.run_as)
    if who is None:
        raise HostCapabilityError(
            f"{spec.name} runs QEMU as user {spec.run_as}, which no longer exists",
            hint=f"make it again: {runas.CREATE_HINT}",
        )
    return who


def writable_files(spec: VmSpec, paths: InstancePaths) -> list[Path]:
    """Files of the instance QEMU opens for writing (those that exist are handed to its user)."""
    own = [Path(disk.path) for disk in spec.disks if not disk.readonly]
    files = [path for path in own if path.parent == paths.dir]
    if spec.uefi is not None:
        files.append(Path(spec.uefi.vars))
    files += [Path(spec.console_log)]
    return files


@contextlib.contextmanager
def confined(spec: VmSpec, paths: InstancePaths) -> Iterator[tuple[list[int], runas.RunAs | None]]:
    """Make the VM's cgroup and hand its files over; yields (cgroup.procs fds, user) for spawn.

    The cgroup is removed again if the body fails; the fds are closed when it ends.
    """
    who = user_of(spec)
    cgroup = Cgroup(spec.cgroup) if spec.cgroup else None
    if who is not None:
        _own_dir(paths.dir, who)
        _hand_over(writable_files(spec, paths), who)
    fds: list[int] = []
    try:
        if cgroup is not None:
            limits = limits_of(spec)
            cgroup.require(limits)
            cgroup.create(limits)
            fds = cgroup.open_procs()
        yield fds, who
    except BaseException:
        close_all(fds)
        fds = []
        if cgroup is not None:
            cgroup.remove()
        raise
    finally:
        close_all(fds)


def _own_dir(directory: Path, who: runas.RunAs) -> None:
    os.chown(directory, 0, who.gid)
    os.chmod(directory, INSTANCE_DIR_MODE)


def _hand_over(files: list[Path], who: runas.RunAs) -> None:
    """chown/chmod through a descriptor opened without following links: QEMU's user could have
    put a symlink in place of a file it owns."""
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise HostCapabilityError(f"cannot hand {path} to user {who.user}: {exc.strerror}") from exc
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fchown(fd, who.uid, who.gid)
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def live_changes(running: VmSpec, wanted: VmSpec, balloon: int | None) -> list[str]:
    """What of `wanted` differs from the running VM and can change live; StateError for what cannot.

    `balloon` is the guest's memory now (None without a balloon device).
    """
    if wanted.cpus != running.cpus:
        raise StateError(
            f"{running.name} runs with {running.cpus} vCPU{'s' if running.cpus > 1 else ''}: "
            "that number changes only at its next start",
            hint=f"stop it first (virtkit stop {running.name}), set, then start it",
        )
    if wanted.memory > running.memory:
        raise StateError(
            f"{running.name} booted with {format_size(running.memory)}: a running VM can give memory back "
            f"(balloon) but not grow beyond that",
            hint=f"stop it first (virtkit stop {running.name}), set, then start it",
        )
    changes = []
    if wanted.memory != (running.memory if balloon is None else balloon):
        if balloon is None:
            raise StateError(
                f"{running.name} has no memory balloon (emulated devices): "
                "its memory changes at its next start",
                hint=f"stop it first (virtkit stop {running.name}), set, then start it",
            )
        changes.append("memory")
    if (wanted.cpu_quota, wanted.cpu_period) != (running.cpu_quota, running.cpu_period):
        changes.append("cpu")
    if [(d.iops, d.bps) for d in wanted.disks] != [(d.iops, d.bps) for d in running.disks]:
        changes.append("disks")
    return changes


def apply_live(running: VmSpec, wanted: VmSpec, changes: list[str], monitor: Monitor) -> VmSpec:
    """Apply `changes` (from live_changes) to the running VM; the spec it runs with afterwards.

    The boot memory stays in the spec (it is the balloon's ceiling); the balloon's target is the
    instance record's memory.
    """
    if "memory" in changes:
        monitor.balloon(wanted.memory)
    if "cpu" in changes and running.cgroup:
        quota, period = wanted.cpu_quota, wanted.cpu_period
        Cgroup(running.cgroup).set(Limits(cpu_quota=quota, cpu_period=period, memory_max=running.memory_max))
    disks = running.disks
    if "disks" in changes:
        for index, (now, new) in enumerate(zip(running.disks, wanted.disks, strict=False)):
            if (now.iops, now.bps) != (new.iops, new.bps) and not now.readonly:
                monitor.set_throttle(f"tg-disk{index}", new.iops, new.bps)
        disks = tuple(
            dataclasses.replace(now, iops=new.iops, bps=new.bps)
            for now, new in zip(running.disks, wanted.disks, strict=False)
        )
    return dataclasses.replace(running, cpu_quota=wanted.cpu_quota, cpu_period=wanted.cpu_period, disks=disks)


def oom_reason(spec: VmSpec) -> str | None:
    """Why QEMU is gone, when it was the kernel enforcing the VM's memory ceiling."""
    if not spec.cgroup or not spec.memory_max or not Cgroup(spec.cgroup).oom_kills():
        return None
    return (
        f"the kernel killed QEMU: out of memory at the VM's ceiling of {format_size(spec.memory_max)} "
        f"(its {format_size(spec.memory)} of RAM and QEMU's own; see docs/limits.md)"
    )


def usage(spec: VmSpec) -> dict[str, object]:
    """What `show` tells of the running VM's confinement and use of the host."""
    quota = f"{spec.cpu_quota / 1000:g}ms/{spec.cpu_period / 1000:g}ms" if spec.cpu_quota else "unlimited"
    details: dict[str, object] = {
        "user": spec.run_as or "root",
        "cpu_allowance": quota,
        "memory_ceiling": spec.memory_max,
        "disk_limits": [{"iops": d.iops, "bps": d.bps} for d in spec.disks if not d.readonly],
    }
    if spec.cgroup:
        cgroup = Cgroup(spec.cgroup)
        details["cgroup"] = spec.cgroup
        details["cpu_seconds"] = cgroup.cpu_seconds()
        details["memory_used"] = cgroup.memory_bytes()
    return details
