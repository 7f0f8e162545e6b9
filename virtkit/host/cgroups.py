"""Detect the cgroup layout (v1, v2 or hybrid) and which resource controllers can enforce limits.

- v2: cgroup2 mounted at /sys/fs/cgroup; controllers from /sys/fs/cgroup/cgroup.controllers;
- hybrid: v1 hierarchies plus cgroup2 elsewhere (systemd's /sys/fs/cgroup/unified);
- v1: v1 hierarchies only; controllers from /proc/cgroups (enabled and attached to a hierarchy).

The controllers virtkit wants are named the v2 way (``io``, not ``blkio``). On v2 some exist
without a controller of that name: ``cpuacct`` is cpu.stat, ``devices`` is an eBPF program,
``freezer`` is cgroup.freeze.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.host.checks import Check, JsonValue, Status

log = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"
WANTED = ("cpu", "cpuacct", "memory", "pids", "io", "cpuset", "devices", "freezer")
# Without these, the CPU/memory/process limits of an instance cannot be enforced at all.
ESSENTIAL = ("cpu", "memory", "pids")
_V1_NAMES = {"blkio": "io"}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: frozenset[str]


def _unescape(field_text: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def parse_mounts(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mounts.append(
            Mount(_unescape(parts[0]), _unescape(parts[1]), parts[2], frozenset(parts[3].split(",")))
        )
    return mounts


def read_mounts(sysroot: Path) -> list[Mount]:
    for name in ("proc/self/mounts", "proc/mounts"):
        try:
            return parse_mounts((sysroot / name).read_text())
        except OSError:
            continue
    return []


@dataclass(frozen=True)
class CgroupState:
    version: str  # "v2", "hybrid", "v1" or "none"
    unified: str | None = None  # where cgroup2 is mounted, if anywhere
    controllers: dict[str, str] = field(default_factory=dict)  # wanted name -> how it is provided

    @property
    def usable(self) -> bool:
        return self.version != "none"

    @property
    def missing(self) -> list[str]:
        return [name for name in WANTED if name not in self.controllers]


def _v1_controllers(sysroot: Path, mounts: list[Mount]) -> set[str]:
    try:
        rows = (sysroot / "proc/cgroups").read_text().splitlines()
    except OSError:
        log.debug("/proc/cgroups unreadable; using cgroup mount options")
        return {opt for m in mounts if m.fstype == "cgroup" for opt in m.options}
    found = set()
    for row in rows:
        cols = row.split()
        # subsys_name hierarchy num_cgroups enabled; hierarchy 0 = not attached to a v1 tree
        if len(cols) == 4 and not row.startswith("#") and cols[1] != "0" and cols[3] == "1":
            found.add(cols[0])
    return found


def _v2_controllers(sysroot: Path, unified: str) -> dict[str, str]:
    base = sysroot / unified.lstrip("/")
    try:
        names = set((base / "cgroup.controllers").read_text().split())
    except OSError:
        names = set()
    found = {name: "v2" for name in names if name in WANTED}
    if "cpu" in names or (base / "cpu.stat").exists():
        found["cpuacct"] = "v2 cpu.stat"
    found["devices"] = "v2 eBPF"  # the kernel always offers BPF device filtering on cgroup2
    children = [base, *(p for p in _subdirs(base))]
    if any((child / "cgroup.freeze").exists() for child in children):
        found["freezer"] = "v2 cgroup.freeze"
    return found


def _subdirs(base: Path) -> list[Path]:
    try:
        return [p for p in base.iterdir() if p.is_dir()]
    except OSError:
        return []


def probe_cgroups(sysroot: Path) -> CgroupState:
    mounts = read_mounts(sysroot)
    v1 = [m for m in mounts if m.fstype == "cgroup"]
    v2 = [m for m in mounts if m.fstype == "cgroup2"]
    unified = next((m.target for m in v2 if m.target == CGROUP_ROOT), v2[0].target if v2 else None)
    if unified == CGROUP_ROOT:
        return CgroupState("v2", unified, _v2_controllers(sysroot, unified))
    if not v1:
        return CgroupState("none", unified)
    # Hybrid: what the unified tree offers, then the v1 hierarchies, which win where both exist.
    controllers = _v2_controllers(sysroot, unified) if unified else {}
    for name in sorted(_v1_controllers(sysroot, mounts)):
        wanted = _V1_NAMES.get(name, name)
        if wanted in WANTED:
            controllers[wanted] = "v1" if wanted == name else f"v1 {name}"
    return CgroupState("hybrid" if unified else "v1", unified, controllers)


def cgroup_checks(state: CgroupState) -> list[Check]:
    return [_version_check(state), _controllers_check(state)]


def _version_check(state: CgroupState) -> Check:
    details: dict[str, JsonValue] = {"version": state.version, "unified": state.unified}
    if state.version == "none":
        return Check(
            "cgroups.version",
            Status.FAIL,
            "no cgroup filesystem is mounted: limits cannot be enforced and containers cannot run",
            remedy=f"mount -t cgroup2 none {CGROUP_ROOT} (systemd does this at boot)",
            required=True,
            details=details,
        )
    text = {
        "v2": "cgroup v2 (unified hierarchy)",
        "hybrid": f"cgroup v1 hybrid: v1 controllers, cgroup2 at {state.unified} (crun may refuse this; "
        "runc works)",
        "v1": "cgroup v1 (legacy hierarchies)",
    }[state.version]
    return Check("cgroups.version", Status.PASS, text, required=True, details=details)


def _controllers_check(state: CgroupState) -> Check:
    details: dict[str, JsonValue] = {"controllers": dict(state.controllers), "missing": state.missing}
    if not state.usable:
        return Check("cgroups.controllers", Status.INFO, "not checked: no cgroup filesystem", details=details)
    if not state.missing:
        return Check(
            "cgroups.controllers", Status.PASS, "all wanted controllers: " + " ".join(WANTED), details=details
        )
    essential = [name for name in ESSENTIAL if name in state.missing]
    what = (
        f"limits on {', '.join(essential)} cannot be enforced"
        if essential
        else "the corresponding limits or features are unavailable"
    )
    where = (
        "cgroup.subtree_control / the kernel command line"
        if state.version == "v2"
        else "the kernel command line (e.g. cgroup_enable=memory)"
    )
    return Check(
        "cgroups.controllers",
        Status.WARN,
        f"missing controllers: {' '.join(state.missing)}: {what}",
        remedy=f"enable them in {where}, or use a kernel built with them",
        details=details,
    )
