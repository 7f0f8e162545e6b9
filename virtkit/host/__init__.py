"""Host capability probes behind `virtkit host check`: CPU flags, KVM, cgroups, namespaces, tools.

This package only probes and reports (no printing); it imports nothing heavier than the standard
library so `virtkit host check` starts fast. `run_checks()` returns a `Report`; the exit-code rule
and the verdict are documented in `virtkit.host.verdict`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtkit.host.checks import (
        Check,
        ContainerSupport,
        HostInfo,
        KvmFunctional,
        Report,
        Status,
        Verdict,
        VmSupport,
    )
    from virtkit.host.cpuinfo import CpuInfo, parse_cpuinfo
    from virtkit.host.kvm import FunctionalProbe, FunctionalProbeResult, KvmIoctlResult, probe_kvm_ioctl
    from virtkit.host.report import run_checks
    from virtkit.host.space import DEFAULT_MIN_FREE, DEFAULT_STATE_ROOT

# Imported on first use: the container driver needs host.cgroups without the whole report.
_EXPORTS = {
    "Check": "checks",
    "ContainerSupport": "checks",
    "HostInfo": "checks",
    "KvmFunctional": "checks",
    "Report": "checks",
    "Status": "checks",
    "Verdict": "checks",
    "VmSupport": "checks",
    "CpuInfo": "cpuinfo",
    "parse_cpuinfo": "cpuinfo",
    "FunctionalProbe": "kvm",
    "FunctionalProbeResult": "kvm",
    "KvmIoctlResult": "kvm",
    "probe_kvm_ioctl": "kvm",
    "run_checks": "report",
    "DEFAULT_MIN_FREE": "space",
    "DEFAULT_STATE_ROOT": "space",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "DEFAULT_MIN_FREE",
    "DEFAULT_STATE_ROOT",
    "Check",
    "ContainerSupport",
    "CpuInfo",
    "FunctionalProbe",
    "FunctionalProbeResult",
    "HostInfo",
    "KvmFunctional",
    "KvmIoctlResult",
    "Report",
    "Status",
    "Verdict",
    "VmSupport",
    "parse_cpuinfo",
    "probe_kvm_ioctl",
    "run_checks",
]
