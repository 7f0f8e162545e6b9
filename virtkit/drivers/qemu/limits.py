"""A VM's share of the host, from its record: CPU allowance, memory ceiling, disk throttling, and
the user QEMU runs as. Pure but for looking the user up and at the directories on the way.

Instance settings read from `record.config` (all optional)::

    cpu_allowance   50% | 150% | 25ms/100ms   hard quota of host CPU time: 50% is half of one host
                                               CPU (as `top` counts), 25ms/100ms is 25 ms per 100 ms
    disk_iops       N                          root disk I/O operations per second
    disk_bandwidth  BYTES                      root disk bytes per second

The memory ceiling is not a setting: QEMU may use the guest's RAM plus MEMORY_OVERHEAD (its own
code and device state) plus, under TCG, the translation cache QEMU grows up to TCG_CODE_CACHE, and
no more; beyond it the kernel reclaims, then kills QEMU rather than the host's other work.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from virtkit.drivers import throttle
from virtkit.drivers.cgroup import cgroup_name
from virtkit.drivers.qemu import runas
from virtkit.drivers.qemu.spec import VmSpec
from virtkit.errors import SpecError
from virtkit.host.qemuuser import KVM_ACCESS_HINT
from virtkit.model import InstanceRecord, MiB

MEMORY_OVERHEAD = 256 * MiB
# QEMU 7.2's default TCG translation buffer (tb-size): 1 GiB, filled as the guest runs new code.
# A 512 MiB Debian guest peaked at 1090 MiB of QEMU memory booting; capping tb-size to 128 MiB
# made that boot 24 % slower, so the ceiling makes room for the cache instead.
TCG_CODE_CACHE = 1024 * MiB
KVM_DEVICE = Path("/dev/kvm")
MIN_QUOTA_US = 1_000  # the kernel refuses CFS quotas under 1 ms
MAX_PERIOD_US = 1_000_000
_MS_FORM = re.compile(r"^([0-9]+(?:\.[0-9]+)?)ms/([0-9]+(?:\.[0-9]+)?)ms$")
_PERCENT_FORM = re.compile(r"^([0-9]+(?:\.[0-9]+)?)%$")


def cpu_allowance(text: str | None, host_cpus: int | None = None) -> tuple[int | None, int]:
    """(quota, period) in microseconds for an allowance such as "50%" or "25ms/100ms"."""
    period = 100_000
    if text is None or text == "":
        return None, period
    value = text.strip().lower()
    if match := _PERCENT_FORM.match(value):
        quota = round(float(match.group(1)) * period / 100)
    elif match := _MS_FORM.match(value):
        quota, period = round(float(match.group(1)) * 1000), round(float(match.group(2)) * 1000)
    else:
        raise SpecError(
            f"invalid CPU allowance {text!r}",
            hint="give a share of host CPU time: 50% (half a CPU), 200% (two CPUs) or 25ms/100ms",
        )
    if not MIN_QUOTA_US <= period <= MAX_PERIOD_US:
        raise SpecError(f"invalid CPU allowance {text!r}: the period must be between 1ms and 1000ms")
    if quota < MIN_QUOTA_US:
        raise SpecError(f"invalid CPU allowance {text!r}: less than 1ms of CPU time per period")
    cpus = host_cpus or os.cpu_count() or 1
    if quota > cpus * period:
        raise SpecError(
            f"invalid CPU allowance {text!r}: more than this host's {cpus} CPUs",
            hint=f"at most {cpus * 100}%",
        )
    return quota, period


def memory_ceiling(memory: int, accel: str) -> int:
    return memory + MEMORY_OVERHEAD + (TCG_CODE_CACHE if accel == "tcg" else 0)


def disk_throttle(record: InstanceRecord) -> tuple[int | None, int | None]:
    """(iops, bytes per second) for the root disk; None is unlimited."""
    return throttle.disk_throttle(record.config)


def run_as(files: list[Path], who: runas.RunAs | None, *, kvm: bool = False) -> tuple[str | None, list[str]]:
    """The user QEMU runs as (None: root), and what to tell the user about it.

    `who` is the unprivileged user if this host has one; `files` are those QEMU opens: the
    instance directory and the image's files; with `kvm` it must also open /dev/kvm.
    """
    if who is None:
        return None, [f"QEMU runs as root: there is no {runas.USER} user (see `virtkit host check`)"]
    for path in files:
        blocked = runas.unreachable(path, who)
        if blocked is not None:
            return None, [
                f"QEMU runs as root: user {who.user} cannot enter {blocked} "
                f"(mode {blocked.stat().st_mode & 0o777:04o}); use a state root it can reach"
            ]
        if path.is_file() and runas.unreadable(path, who):
            return None, [f"QEMU runs as root: user {who.user} cannot read {path}"]
    if kvm and runas.unreadable(KVM_DEVICE, who, write=True):
        return None, [f"QEMU runs as root: user {who.user} cannot open {KVM_DEVICE} ({KVM_ACCESS_HINT})"]
    return who.user, []


def confine(
    spec: VmSpec, record: InstanceRecord, opened: list[Path], who: runas.RunAs | None,
    root: Path | None = None,
) -> tuple[VmSpec, list[str]]:
    """`spec` with its limits, cgroup and user; what to tell the user about them."""
    quota, period = cpu_allowance(record.config.get("cpu_allowance"))
    iops, bps = disk_throttle(record)
    disks = tuple(
        dataclasses.replace(disk, iops=iops, bps=bps) if index == 0 else disk
        for index, disk in enumerate(spec.disks)
    )
    user, notices = run_as(opened, who, kvm=spec.accel == "kvm")
    confined = dataclasses.replace(
        spec,
        disks=disks,
        run_as=user,
        cgroup=cgroup_name(record.name, record.uuid, root),
        cpu_quota=quota,
        cpu_period=period,
        memory_max=memory_ceiling(spec.memory, spec.accel),
    )
    return confined, notices
