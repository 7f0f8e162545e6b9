"""Turn the probes into the verdict ("VMs: emulated; containers: available") and the exit code.

Exit code (like ``kvm-ok``):

- **2**: the check cannot run at all: not Linux, or /proc/cpuinfo unreadable;
- **1**: a *required* check is FAIL;
- **0**: otherwise, WARNs included.

Required checks are the ones without which virtkit cannot do its job on this host:
``host.platform`` (/proc readable), ``kernel.namespaces`` (mnt, uts, ipc, pid, net),
``cgroups.version`` (some cgroup filesystem mounted) and ``host.usable`` (VMs at least emulated,
or containers available). Missing KVM is never required: QEMU's TCG emulation runs every guest,
only slower. Missing tools are WARN; they matter through ``host.usable``.

VMs are *hardware-accelerated* when KVM answers its ioctls, *emulated* (TCG) when the host's
qemu-system exists but KVM is unusable, *unavailable* without that qemu-system. Until a functional
probe boots a guest under KVM, hardware acceleration is reported as possible but unverified, except
on kvm_pvm (PVM runs only guest kernels built for it): there the verdict is emulated.
Containers are *available* with an OCI runtime (runc or crun), the mnt/pid/net/uts/ipc namespaces,
a mounted cgroup filesystem and overlayfs. When the OCI runtime probe ran, the runtime is the one
that ran its test container, and none doing so makes containers unavailable; otherwise it is
guessed from the cgroup layout (crun 1.8 refuses hybrid hosts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from virtkit.host.cgroups import CgroupState
from virtkit.host.checks import Check, ContainerSupport, KvmFunctional, Status, Verdict, VmSupport
from virtkit.host.kernel import CONTAINER_NAMESPACES, OverlayState
from virtkit.host.kvm import KvmState
from virtkit.host.ociruntime import OciRuntimeVerdict
from virtkit.host.tools import ToolResult

EXIT_OK = 0
EXIT_REQUIRED_FAILED = 1
EXIT_CANNOT_RUN = 2


@dataclass(frozen=True)
class Capabilities:
    """The facts the verdict depends on, gathered by `run_checks`."""

    qemu: str  # the qemu-system binary for the host's architecture
    qemu_package: str
    qemu_found: bool
    kvm: KvmState
    runtimes: tuple[str, ...]  # OCI runtimes found, in virtkit's order of preference
    cgroups: CgroupState
    namespaces: frozenset[str]
    overlay: OverlayState
    tools: tuple[ToolResult, ...] = ()
    oci: OciRuntimeVerdict | None = None  # the OCI runtime probe's verdict, when it ran


def runtime_preference(cgroup_version: str) -> tuple[str, ...]:
    # crun is lighter, but (measured: crun 1.8) refuses hybrid cgroup hosts where runc works.
    return ("runc", "crun") if cgroup_version == "hybrid" else ("crun", "runc")


def _kvm_problem(kvm: KvmState) -> str:
    result = kvm.ioctl
    if not kvm.exists or result is None:
        return f"{kvm.device} is missing"
    if result.failed_stage == "open":
        return f"cannot open {kvm.device}: {result.error}"
    if result.failed_stage == "api":
        return f"KVM_GET_API_VERSION failed: {result.error}"
    return f"KVM_CREATE_VM failed: {result.error}"


def _vm_verdict(caps: Capabilities) -> tuple[VmSupport, str, KvmFunctional]:
    kvm = caps.kvm
    run = kvm.functional if kvm.functional is None or kvm.functional.ran else None
    functional = (
        KvmFunctional.NOT_RUN if run is None else KvmFunctional.PASSED if run.ok else KvmFunctional.FAILED
    )
    if not caps.qemu_found:
        return (
            VmSupport.UNAVAILABLE,
            f"{caps.qemu} not found (apt-get install {caps.qemu_package})",
            functional,
        )
    if not kvm.usable:
        return VmSupport.EMULATED, f"{_kvm_problem(kvm)}; {caps.qemu} emulates the CPU", functional
    pvm = (
        "; KVM here is kvm_pvm, which runs only PVM-enabled guest kernels"
        if kvm.vendor_module == "kvm_pvm"
        else ""
    )
    if run is None and pvm:
        # PVM needs guest kernels built for it; the guests virtkit boots are not, so the honest
        # verdict without a functional test is emulation.
        reason = (
            "KVM here is kvm_pvm, which runs only PVM-enabled guest kernels; ordinary guests run "
            f"emulated by {caps.qemu} until a functional KVM test shows otherwise"
        )
        return VmSupport.EMULATED, reason, functional
    if run is None:
        reason = (
            "KVM answers its ioctls (API 12, test VM created) but no guest has booted under it "
            f"(functional KVM test not run){pvm}"
        )
        return VmSupport.HARDWARE, reason, functional
    if run.ok:
        return VmSupport.HARDWARE, f"a test guest ran under KVM: {run.summary}", functional
    reason = f"{run.summary}; TCG is used{pvm}"
    return VmSupport.EMULATED, reason, functional


def _probed(caps: Capabilities) -> OciRuntimeVerdict | None:
    """The OCI runtime probe's verdict when it tried at least one runtime."""
    oci = caps.oci
    return oci if oci is not None and oci.ran and oci.trials else None


def _container_verdict(caps: Capabilities) -> tuple[ContainerSupport, str, str | None]:
    missing_ns = [ns for ns in CONTAINER_NAMESPACES if ns not in caps.namespaces]
    oci = _probed(caps)
    if oci is None:
        runtime = next((r for r in runtime_preference(caps.cgroups.version) if r in caps.runtimes), None)
    else:
        runtime = oci.chosen.name if oci.chosen is not None else None
    problems = []
    if runtime is None:
        problems.append(
            "no OCI runtime (apt-get install runc)"
            if oci is None
            else f"no OCI runtime runs a test container ({oci.refusals()})"
        )
    if missing_ns:
        problems.append(f"missing namespaces {' '.join(missing_ns)}")
    if not caps.cgroups.usable:
        problems.append("no cgroup filesystem mounted")
    if not caps.overlay.available:
        problems.append(f"overlayfs {'not found' if caps.overlay.status == 'absent' else 'unverified'}")
    if problems:
        return ContainerSupport.UNAVAILABLE, "; ".join(problems), runtime
    reason = f"{runtime}, namespaces, cgroup {caps.cgroups.version}, overlayfs"
    if runtime == "crun" and caps.cgroups.version == "hybrid" and oci is None:
        reason += " (crun may refuse hybrid cgroups: install runc if containers fail to start)"
    return ContainerSupport.AVAILABLE, reason, runtime


def decide(caps: Capabilities) -> Verdict:
    vms, vms_reason, functional = _vm_verdict(caps)
    containers, containers_reason, runtime = _container_verdict(caps)
    return Verdict(vms, vms_reason, functional, containers, containers_reason, runtime)


def usable_check(verdict: Verdict, caps: Capabilities) -> Check:
    """host.usable: the required check that virtkit can run *something* here."""
    details = {"vms": str(verdict.vms), "containers": str(verdict.containers)}
    if verdict.vms is not VmSupport.UNAVAILABLE or verdict.containers is ContainerSupport.AVAILABLE:
        summary = f"virtkit can run VMs ({verdict.vms_label}) and containers ({verdict.containers_label})"
        return Check("host.usable", Status.PASS, summary, required=True, details=details)
    return Check(
        "host.usable",
        Status.FAIL,
        f"virtkit can run neither VMs ({verdict.vms_reason}) nor containers ({verdict.containers_reason})",
        remedy=f"apt-get install {caps.qemu_package} for VMs, or runc for containers",
        required=True,
        details=details,
    )


def exit_code(checks: Iterable[Check]) -> int:
    """1 when a required check failed, else 0 (2 is decided before any check runs)."""
    failed = any(c.required and c.status is Status.FAIL for c in checks)
    return EXIT_REQUIRED_FAILED if failed else EXIT_OK
