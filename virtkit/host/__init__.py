"""Host capability probes behind `virtkit host check`: CPU flags, KVM, cgroups, namespaces, tools.

This package only probes and reports (no printing); it imports nothing heavier than the standard
library so `virtkit host check` starts fast. `run_checks()` returns a `Report`; the exit-code rule
and the verdict are documented in `virtkit.host.verdict`.
"""

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
