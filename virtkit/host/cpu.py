"""CPU checks: the model, whether this host is itself a guest, and the virtualization flags explained.

The flags are the admin's ``grep flags /proc/cpuinfo``, interpreted:

- ``vmx`` / ``svm``: Intel VT-x / AMD-V, the CPU can run guest code directly (KVM needs one of them);
- ``ept`` / ``npt``: second-level address translation, the MMU maps guest memory itself, so guests
  page without the hypervisor's help (much faster for memory-heavy guests);
- ``hypervisor``: this "CPU" is virtual; the host is a VM and KVM here is nested virtualization.

When the flags are missing on a CPU family that has had them for years, the firmware has probably
turned them off (Linux hides ``vmx`` when the BIOS locks VT-x off). That is only ever a hint: WARN.
"""

from __future__ import annotations

import re
from pathlib import Path

from virtkit.host.checks import Check, JsonValue, Status
from virtkit.host.cpuinfo import CpuInfo

# Families where VT-x / AMD-V has been standard since ~2010; absence there points at the firmware.
_VT_CAPABLE_MODELS = re.compile(
    r"Xeon|Core\(TM\) i[3579]|Core\(TM\) Ultra|Core\(TM\) [3579] "
    r"|Ryzen|EPYC|Threadripper|Opteron",
    re.IGNORECASE,
)

_FLAG_MEANINGS = {
    "vmx": "Intel VT-x: the CPU can run guest code directly, so KVM can accelerate VMs",
    "svm": "AMD-V: the CPU can run guest code directly, so KVM can accelerate VMs",
    "ept": "Intel EPT: the MMU translates guest memory itself (fast guest paging)",
    "npt": "AMD NPT/RVI: the MMU translates guest memory itself (fast guest paging)",
    "hypervisor": "the CPU is virtual: this host is a VM, KVM here would be nested virtualization",
}


def read_dmi(sysroot: Path) -> str | None:
    """The machine's maker and product from DMI ("QEMU Standard PC", "Amazon EC2 m5.large"), if any."""
    parts = []
    for name in ("sys_vendor", "product_name"):
        try:
            parts.append((sysroot / "sys/class/dmi/id" / name).read_text().strip())
        except OSError:
            continue
    text = " ".join(p for p in parts if p)
    return text or None


def cpu_checks(cpu: CpuInfo, dmi: str | None = None) -> list[Check]:
    """cpu.model, cpu.hypervisor, cpu.virt-flags and cpu.slat."""
    return [_model_check(cpu), _hypervisor_check(cpu, dmi), _virt_flags_check(cpu), _slat_check(cpu)]


def _meanings(cpu: CpuInfo) -> dict[str, JsonValue]:
    return {flag: text for flag, text in _FLAG_MEANINGS.items() if flag in cpu.flags | cpu.vmx_flags}


def _model_check(cpu: CpuInfo) -> Check:
    model = cpu.model_name or "unknown model"
    vendor = cpu.vendor or "unknown vendor"
    return Check(
        "cpu.model",
        Status.INFO,
        f"{model} ({vendor}, {cpu.arch}, {cpu.count} logical CPUs)",
        details={"vendor": cpu.vendor, "model_name": cpu.model_name, "arch": cpu.arch, "cpus": cpu.count},
    )


def _hypervisor_check(cpu: CpuInfo, dmi: str | None) -> Check:
    details: dict[str, JsonValue] = {"hypervisor_flag": cpu.hypervisor, "dmi": dmi}
    if cpu.hypervisor:
        where = f" ({dmi})" if dmi else ""
        return Check(
            "cpu.hypervisor",
            Status.INFO,
            f"this host is a virtual machine{where}: KVM here is nested virtualization, which only works "
            "if the outer hypervisor passes virtualization through",
            details=details,
        )
    return Check("cpu.hypervisor", Status.INFO, "no hypervisor flag: bare metal", details=details)


def firmware_disabled_hint(cpu: CpuInfo) -> bool:
    """True when an x86 bare-metal CPU lacks vmx/svm but belongs to a family that has it."""
    return (
        cpu.is_x86
        and cpu.virt_extension is None
        and not cpu.hypervisor
        and bool(_VT_CAPABLE_MODELS.search(cpu.model_name))
    )


def _virt_flags_check(cpu: CpuInfo) -> Check:
    details: dict[str, JsonValue] = {
        "extension": cpu.virt_extension,
        "meanings": _meanings(cpu),
        "firmware_disabled_hint": firmware_disabled_hint(cpu),
    }
    if not cpu.is_x86:
        return Check(
            "cpu.virt-flags",
            Status.INFO,
            f"{cpu.arch} CPUs do not list virtualization in /proc/cpuinfo; /dev/kvm tells whether "
            "the kernel can use it",
            details=details,
        )
    ext = cpu.virt_extension
    if ext is not None:
        return Check("cpu.virt-flags", Status.PASS, f"{ext}: {_FLAG_MEANINGS[ext]}", details=details)
    if cpu.hypervisor:
        return Check(
            "cpu.virt-flags",
            Status.WARN,
            "no vmx/svm: this VM's hypervisor does not pass hardware virtualization through, "
            "so guests here run emulated (TCG) unless another KVM backend exists",
            remedy="enable nested virtualization on the outer host (e.g. kvm_intel nested=1 and "
            "`-cpu host` for this VM), or accept TCG emulation",
            details=details,
        )
    if firmware_disabled_hint(cpu):
        return Check(
            "cpu.virt-flags",
            Status.WARN,
            f"no vmx/svm although {cpu.model_name} normally has them: virtualization is probably "
            "disabled in the firmware",
            remedy="enable Intel VT-x (Virtualization Technology) or AMD SVM Mode in the BIOS/UEFI setup, "
            "then power-cycle",
            details=details,
        )
    return Check(
        "cpu.virt-flags",
        Status.WARN,
        "no vmx/svm: this CPU has no hardware virtualization (or the firmware hides it); "
        "VMs will be emulated (TCG), several times slower",
        remedy="check the BIOS/UEFI setup for a virtualization option; otherwise use TCG or another host",
        details=details,
    )


def _slat_check(cpu: CpuInfo) -> Check:
    details: dict[str, JsonValue] = {"slat": cpu.slat}
    if not cpu.is_x86:
        return Check(
            "cpu.slat",
            Status.INFO,
            f"{cpu.arch}: stage-2 translation is part of the architecture's virtualization support",
            details=details,
        )
    if cpu.virt_extension is None:
        return Check("cpu.slat", Status.INFO, "not applicable: no vmx/svm", details=details)
    if cpu.slat is not None:
        return Check("cpu.slat", Status.PASS, f"{cpu.slat}: {_FLAG_MEANINGS[cpu.slat]}", details=details)
    return Check(
        "cpu.slat",
        Status.WARN,
        "no ept/npt: KVM falls back to shadow page tables, memory-heavy guests run slower",
        remedy="use a newer CPU (EPT/NPT exist since ~2008), or pass ept/npt through to this VM",
        details=details,
    )
