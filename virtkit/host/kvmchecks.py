"""KVM checks: kvm.device, kvm.access, kvm.api, kvm.module, kvm.nested, kvm.functional.

Missing or broken KVM is never worse than WARN: QEMU's TCG emulation still runs every guest.
Each check is always present (INFO "not checked" when an earlier level failed) so the --json
document has the same ids on every host.
"""

from __future__ import annotations

import errno

from virtkit.host.checks import Check, JsonValue, Status
from virtkit.host.cpuinfo import CpuInfo
from virtkit.host.kvm import KvmState, is_permission_error

_PVM_NOTE = (
    "kvm_pvm (PVM) provides /dev/kvm without VT-x/AMD-V; it runs only PVM-enabled guest kernels, "
    "so ordinary guests may hang"
)


def kvm_checks(state: KvmState, cpu: CpuInfo) -> list[Check]:
    return [
        _device_check(state, cpu),
        _access_check(state),
        _api_check(state),
        _module_check(state, cpu),
        _nested_check(state),
        _functional_check(state),
    ]


def missing_kvm_remedy(cpu: CpuInfo) -> str:
    """What to do when /dev/kvm is absent, judged from the CPU flags."""
    if cpu.virt_extension is not None:
        module = "kvm_intel" if cpu.virt_extension == "vmx" else "kvm_amd"
        return (
            f"modprobe {module}; if it fails, `dmesg | grep -i kvm` tells why "
            "('disabled by bios': enable virtualization in the BIOS/UEFI setup)"
        )
    if not cpu.is_x86:
        return (
            "KVM on this architecture needs the kernel booted with hypervisor mode (EL2 on arm64): "
            "check `dmesg | grep -i kvm` and the firmware"
        )
    if cpu.hypervisor:
        return "enable nested virtualization on the outer host, or accept TCG emulation"
    return "enable virtualization in the BIOS/UEFI setup if the CPU has it; otherwise VMs run under TCG"


def _device_check(state: KvmState, cpu: CpuInfo) -> Check:
    details: dict[str, JsonValue] = {
        "path": state.device,
        "exists": state.exists,
        "char_device": state.char_device,
        "mode": state.mode,
        "owner": state.owner,
    }
    if state.exists:
        return Check("kvm.device", Status.PASS, f"{state.device} exists", details=details)
    return Check(
        "kvm.device",
        Status.WARN,
        f"{state.device} is missing: no KVM, VMs will be emulated (TCG)",
        remedy=missing_kvm_remedy(cpu),
        details=details,
    )


def _access_check(state: KvmState) -> Check:
    result = state.ioctl
    if not state.exists or result is None:
        return Check("kvm.access", Status.INFO, f"not checked: {state.device} is missing")
    details: dict[str, JsonValue] = {"errno": result.errno, "error": result.error, "owner": state.owner}
    if result.opened:
        return Check("kvm.access", Status.PASS, f"{state.device} opens read-write", details=details)
    if is_permission_error(result):
        return Check(
            "kvm.access",
            Status.WARN,
            f"{state.device} is not read-writable by this user ({result.error})",
            remedy="run as root, or add the user to the group owning /dev/kvm "
            "(`usermod -aG kvm USER`, then log in again)",
            details=details,
        )
    return Check(
        "kvm.access",
        Status.WARN,
        f"cannot open {state.device}: {result.error}",
        remedy="`dmesg | grep -i kvm` tells why; reload the vendor module (e.g. modprobe -r kvm_intel && "
        "modprobe kvm_intel)",
        details=details,
    )


def _api_check(state: KvmState) -> Check:
    result = state.ioctl
    if result is None or not result.opened:
        return Check("kvm.api", Status.INFO, "not checked: /dev/kvm could not be opened")
    details: dict[str, JsonValue] = {
        "api_version": result.api_version,
        "failed_stage": result.failed_stage,
        "errno": result.errno,
        "error": result.error,
    }
    if result.ok:
        return Check(
            "kvm.api",
            Status.PASS,
            "KVM_GET_API_VERSION = 12 and KVM_CREATE_VM created a VM",
            details=details,
        )
    if result.failed_stage == "api":
        return Check(
            "kvm.api",
            Status.WARN,
            f"KVM_GET_API_VERSION failed: {result.error}; this is not a working KVM device",
            remedy="`dmesg | grep -i kvm` tells why; VMs will be emulated (TCG)",
            details=details,
        )
    remedy = "`dmesg | grep -i kvm` tells why; VMs will be emulated (TCG)"
    if result.errno == errno.EBUSY:
        remedy = "another hypervisor (VirtualBox, VMware) holds the virtualization extensions: stop it"
    return Check(
        "kvm.api", Status.WARN, f"KVM_CREATE_VM failed: {result.error}", remedy=remedy, details=details
    )


def _module_check(state: KvmState, cpu: CpuInfo) -> Check:
    details: dict[str, JsonValue] = {"loaded": list(state.modules)}
    vendor = state.vendor_module
    if vendor == "kvm_pvm":
        return Check("kvm.module", Status.INFO, _PVM_NOTE, details=details)
    if vendor is not None:
        return Check("kvm.module", Status.PASS, f"KVM provided by {vendor}", details=details)
    if not cpu.is_x86:
        loaded = "kvm is loaded" if "kvm" in state.modules else "no kvm module in /sys/module"
        return Check(
            "kvm.module", Status.INFO, f"{loaded} (built into the kernel on {cpu.arch})", details=details
        )
    if cpu.virt_extension is not None:
        module = "kvm_intel" if cpu.virt_extension == "vmx" else "kvm_amd"
        # kvm without its vendor module: the vendor module refused to load, usually "disabled by bios".
        half = "kvm is loaded but " if "kvm" in state.modules else ""
        return Check(
            "kvm.module",
            Status.WARN,
            f"{half}{module} is not loaded although the CPU has {cpu.virt_extension}",
            remedy=missing_kvm_remedy(cpu),
            details=details,
        )
    return Check(
        "kvm.module", Status.INFO, "no KVM vendor module loaded (the CPU shows no vmx/svm)", details=details
    )


def _nested_check(state: KvmState) -> Check:
    details: dict[str, JsonValue] = {"nested": dict(state.nested)}
    for module, value in state.nested.items():
        enabled = value.upper() in ("Y", "1")
        word = "enabled" if enabled else "disabled"
        remedy = (
            None
            if enabled
            else (f"echo 'options {module} nested=1' > /etc/modprobe.d/kvm-nested.conf, then reload {module}")
        )
        return Check(
            "kvm.nested",
            Status.INFO,
            f"nested virtualization for this host's guests is {word} ({module} nested={value})",
            remedy=remedy,
            details=details,
        )
    return Check(
        "kvm.nested",
        Status.INFO,
        "nested parameter not readable (kvm_intel/kvm_amd not loaded)",
        details=details,
    )


def _functional_check(state: KvmState) -> Check:
    run = state.functional
    if run is not None and not run.ran:
        return Check("kvm.functional", Status.INFO, f"functional KVM test {run.summary}")
    if run is None:
        why = (
            "KVM answers its ioctls but no guest was booted, so acceleration is possible but unverified"
            if state.usable
            else "KVM is not usable"
        )
        return Check("kvm.functional", Status.INFO, f"functional KVM test not run: {why}")
    details: dict[str, JsonValue] = {"ok": run.ok, "elapsed_s": run.elapsed_s, **run.details}
    if run.ok:
        took = f" in {run.elapsed_s:.2f}s" if run.elapsed_s is not None else ""
        return Check(
            "kvm.functional", Status.PASS, f"a test guest ran under KVM{took}: {run.summary}", details=details
        )
    remedy = (
        "VMs will use TCG emulation; for KVM fix nested virtualization on the outer host or use bare metal"
    )
    if state.vendor_module == "kvm_pvm":
        remedy = f"VMs will use TCG emulation; {_PVM_NOTE}"
    return Check(
        "kvm.functional",
        Status.WARN,
        run.summary,
        remedy=remedy,
        details=details,
    )
