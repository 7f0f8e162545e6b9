"""Parse /proc/cpuinfo into a `CpuInfo`: what `grep flags /proc/cpuinfo` tells an admin, as data.

x86 kernels print one block per logical CPU with ``vendor_id``, ``model name`` and ``flags`` (and,
since Linux 5.8, a separate ``vmx flags`` line on Intel). arm64 kernels print ``Features`` and the
numeric ``CPU implementer`` / ``CPU part`` instead of a model name; we translate the common ones.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

X86_ARCHES = frozenset({"x86_64", "i386", "i486", "i586", "i686"})

_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

# ARM's registry of implementer codes (Arm ARM, MIDR_EL1); only the ones found in servers and boards.
_ARM_IMPLEMENTERS = {
    "0x41": "ARM",
    "0x42": "Broadcom",
    "0x43": "Cavium",
    "0x46": "Fujitsu",
    "0x48": "HiSilicon",
    "0x4e": "NVIDIA",
    "0x50": "APM",
    "0x51": "Qualcomm",
    "0x61": "Apple",
    "0xc0": "Ampere",
}
_ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53",
    ("0x41", "0xd07"): "Cortex-A57",
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd49"): "Neoverse-N2",
    ("0x41", "0xd4f"): "Neoverse-V2",
    ("0xc0", "0xac3"): "Ampere-1",
}


def host_arch(machine: str | None = None) -> str:
    """The kernel's architecture name (``uname -m``), with Debian/BSD aliases folded in."""
    name = (machine or platform.machine()).lower()
    return _ARCH_ALIASES.get(name, name)


@dataclass(frozen=True)
class CpuInfo:
    """The first CPU's identity and feature flags (all logical CPUs of a host share them)."""

    arch: str
    vendor: str
    model_name: str
    flags: frozenset[str]
    vmx_flags: frozenset[str] = frozenset()
    count: int = 0

    @property
    def is_x86(self) -> bool:
        return self.arch in X86_ARCHES

    @property
    def hypervisor(self) -> bool:
        """True when the CPU says it runs under a hypervisor: this host is itself a virtual machine."""
        return "hypervisor" in self.flags

    @property
    def virt_extension(self) -> str | None:
        """``vmx`` (Intel VT-x) or ``svm`` (AMD-V) when the CPU exposes hardware virtualization."""
        for flag in ("vmx", "svm"):
            if flag in self.flags:
                return flag
        return None

    @property
    def slat(self) -> str | None:
        """``ept`` (Intel) or ``npt`` (AMD): the MMU translates guest memory itself (fast paging)."""
        if "ept" in self.flags or "ept" in self.vmx_flags:
            return "ept"
        if "npt" in self.flags:
            return "npt"
        return None

    @property
    def virt_extension_name(self) -> str:
        return {"vmx": "Intel VT-x", "svm": "AMD-V"}.get(self.virt_extension or "", "none")


def _blocks(text: str) -> list[dict[str, str]]:
    """Split cpuinfo text into one key→value dict per blank-line-separated block."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip().lower(), value.strip())
    if current:
        blocks.append(current)
    return blocks


def _arm_identity(block: dict[str, str]) -> tuple[str, str]:
    implementer = block.get("cpu implementer", "").lower()
    part = block.get("cpu part", "").lower()
    vendor = _ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}" if implementer else "")
    model = _ARM_PARTS.get((implementer, part), f"part {part}" if part else "")
    return vendor, f"{vendor} {model}".strip()


def parse_cpuinfo(text: str, arch: str | None = None) -> CpuInfo:
    """Parse /proc/cpuinfo text; `arch` defaults to this machine's (``platform.machine()``)."""
    arch = host_arch(arch)
    blocks = _blocks(text)
    processors = [b for b in blocks if "processor" in b]
    first = next(
        (b for b in processors if "flags" in b or "features" in b), processors[0] if processors else {}
    )
    flag_text = first.get("flags", first.get("features", ""))
    vendor = first.get("vendor_id", "")
    model_name = first.get("model name", "")
    if not vendor and "cpu implementer" in first:
        vendor, arm_model = _arm_identity(first)
        model_name = model_name or arm_model
    return CpuInfo(
        arch=arch,
        vendor=vendor,
        model_name=" ".join(model_name.split()),  # Intel pads names with runs of spaces
        flags=frozenset(flag_text.split()),
        vmx_flags=frozenset(first.get("vmx flags", "").split()),
        count=len(processors),
    )
