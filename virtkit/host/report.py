"""`run_checks`: probe the whole host and return the `Report` behind `virtkit host check`.

Every probe reads through `sysroot` (tests pass a fake tree); tool lookup, version commands, the
KVM ioctls, the functional KVM probe and the OCI runtime probe are parameters for the same reason.
The tool versions and the OCI runtime probe run in background threads while the files are read.
"""

from __future__ import annotations

import logging
import platform
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from virtkit.host.cgroups import CgroupState, cgroup_checks, probe_cgroups
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
from virtkit.host.cpu import cpu_checks, read_dmi
from virtkit.host.cpuinfo import CpuInfo, host_arch, parse_cpuinfo
from virtkit.host.criu import criu_check
from virtkit.host.devices import device_checks, probe_devices
from virtkit.host.kernel import (
    OverlayState,
    kernel_release,
    namespaces_check,
    os_name,
    overlay_check,
    probe_namespaces,
    probe_overlay,
    probe_userns,
    userns_check,
)
from virtkit.host.kvm import FunctionalProbe, KvmIoctlProber, KvmState, probe_kvm, probe_kvm_ioctl
from virtkit.host.kvmchecks import kvm_checks
from virtkit.host.ociruntime import (
    IdmapProbe,
    OciProbe,
    OciRuntimeVerdict,
    idmap_check,
    oci_runtime_check,
    run_oci_probe,
)
from virtkit.host.qemuuser import probe_qemu_user, qemu_user_check
from virtkit.host.space import DEFAULT_MIN_FREE, DEFAULT_STATE_ROOT, probe_space, space_check
from virtkit.host.tools import (
    OCI_RUNTIMES,
    TOOLS,
    RunVersion,
    ToolResult,
    Which,
    probe_tools,
    qemu_for_arch,
    run_version_command,
    tool_checks,
)
from virtkit.host.verdict import EXIT_CANNOT_RUN, Capabilities, decide, exit_code, usable_check

log = logging.getLogger(__name__)


def default_which(name: str) -> str | None:
    return shutil.which(name)


def _cannot_run(arch: str, system: str, why: str, remedy: str) -> Report:
    check = Check("host.platform", Status.FAIL, why, remedy=remedy, required=True)
    host = HostInfo(arch, platform.release(), system, "", "", 0, False, None, None)
    verdict = Verdict(
        VmSupport.UNAVAILABLE, why, KvmFunctional.NOT_RUN, ContainerSupport.UNAVAILABLE, why, None
    )
    return Report(host, (check,), verdict, EXIT_CANNOT_RUN)


def _qemu_package(qemu: str) -> str:
    return next((t.package for t in TOOLS if t.name == qemu), "qemu-system")


def run_checks(
    *,
    sysroot: Path = Path("/"),
    state_root: Path = DEFAULT_STATE_ROOT,
    min_free: int = DEFAULT_MIN_FREE,
    arch: str | None = None,
    system: str | None = None,
    which: Which = default_which,
    run_version: RunVersion = run_version_command,
    kvm_ioctl: KvmIoctlProber = probe_kvm_ioctl,
    kvm_probe: FunctionalProbe | None = None,
    oci_probe: OciProbe | None = None,
    idmap_probe: IdmapProbe | None = None,
) -> Report:
    """Probe the host. `state_root` is a real path (not under `sysroot`); `arch` and `system` default
    to this machine's ``platform.machine()`` and ``platform.system()``. `kvm_probe` boots a real guest
    under KVM; when None the report says the functional KVM test was not run. `oci_probe` runs a
    test container with each OCI runtime (`containers.oci-runtime`); when None, likewise."""
    arch = host_arch(arch)
    system = system or platform.system()
    if system != "Linux":
        return _cannot_run(
            arch, system, f"host check needs Linux, this is {system}", "run virtkit on a Linux host"
        )
    try:
        cpuinfo_text = (sysroot / "proc/cpuinfo").read_text()
    except OSError as exc:
        return _cannot_run(
            arch,
            system,
            f"cannot read {sysroot / 'proc/cpuinfo'}: {exc.strerror or exc}",
            "mount /proc (mount -t proc proc /proc)",
        )
    with ThreadPoolExecutor(max_workers=2) as pool:
        tools_future = pool.submit(probe_tools, which, run_version)
        oci_future = pool.submit(run_oci_probe, oci_probe) if oci_probe is not None else None
        report = _assemble(
            sysroot, arch, cpuinfo_text, state_root, min_free, kvm_ioctl, kvm_probe, tools_future.result,
            oci_future.result if oci_future is not None else lambda: None, idmap_probe, criu_check(which),
        )  # fmt: skip
    return report


def _assemble(
    sysroot: Path,
    arch: str,
    cpuinfo_text: str,
    state_root: Path,
    min_free: int,
    kvm_ioctl: KvmIoctlProber,
    kvm_probe: FunctionalProbe | None,
    tool_results: Callable[[], list[ToolResult]],
    oci_verdict: Callable[[], OciRuntimeVerdict | None] = lambda: None,
    idmap_probe: IdmapProbe | None = None,
    criu: Check | None = None,
) -> Report:
    cpu = parse_cpuinfo(cpuinfo_text, arch)
    release = kernel_release(sysroot)
    os_pretty = os_name(sysroot)
    kvm = probe_kvm(sysroot, kvm_ioctl, kvm_probe)
    cgroups = probe_cgroups(sysroot)
    namespaces = probe_namespaces(sysroot)
    overlay = probe_overlay(sysroot, release)
    caps = _capabilities(cpu.arch, kvm, cgroups, namespaces, overlay, tool_results(), oci_verdict())
    verdict = decide(caps)
    checks = [
        Check("host.platform", Status.PASS, f"Linux {release} ({os_pretty}, {cpu.arch})", required=True),
        *cpu_checks(cpu, read_dmi(sysroot)),
        *kvm_checks(kvm, cpu),
        *device_checks(probe_devices(sysroot), cpu.vendor),
        qemu_user_check(probe_qemu_user(sysroot), verdict.vms is VmSupport.HARDWARE),
        *cgroup_checks(cgroups),
        namespaces_check(namespaces),
        userns_check(probe_userns(sysroot), namespaces),
        overlay_check(overlay, release),
        space_check(probe_space(state_root), min_free),
        *tool_checks(caps.tools),
        oci_runtime_check(caps.oci),
        idmap_check(idmap_probe),
        *([criu] if criu is not None else []),
        usable_check(verdict, caps),
    ]
    return Report(_host_info(cpu, release, os_pretty), tuple(checks), verdict, exit_code(checks))


def _capabilities(
    arch: str,
    kvm: KvmState,
    cgroups: CgroupState,
    namespaces: frozenset[str],
    overlay: OverlayState,
    tools: list[ToolResult],
    oci: OciRuntimeVerdict | None = None,
) -> Capabilities:
    qemu = qemu_for_arch(arch)
    found = {t.tool.name for t in tools if t.found}
    return Capabilities(
        qemu=qemu,
        qemu_package=_qemu_package(qemu),
        qemu_found=qemu in found,
        kvm=kvm,
        runtimes=tuple(r for r in OCI_RUNTIMES if r in found),
        cgroups=cgroups,
        namespaces=namespaces,
        overlay=overlay,
        tools=tuple(tools),
        oci=oci,
    )


def _host_info(cpu: CpuInfo, release: str, os_pretty: str) -> HostInfo:
    return HostInfo(
        arch=cpu.arch,
        kernel=release,
        os=os_pretty,
        cpu_vendor=cpu.vendor,
        cpu_model=cpu.model_name,
        cpus=cpu.count,
        hypervisor=cpu.hypervisor,
        virtualization=cpu.virt_extension,
        slat=cpu.slat,
    )
