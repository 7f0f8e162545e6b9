"""parse_cpuinfo on recorded /proc/cpuinfo texts from real CPU families."""

from __future__ import annotations

import pytest
from hosttree import cpuinfo_text

from virtkit.host import CpuInfo, parse_cpuinfo
from virtkit.host.cpuinfo import host_arch


def parse(name: str, arch: str = "x86_64") -> CpuInfo:
    return parse_cpuinfo(cpuinfo_text(name), arch)


def test_intel_with_vtx_and_ept() -> None:
    cpu = parse("intel-vtx-ept")
    assert cpu.vendor == "GenuineIntel"
    assert cpu.model_name == "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz"
    assert cpu.count == 2
    assert cpu.virt_extension == "vmx"
    assert cpu.virt_extension_name == "Intel VT-x"
    assert cpu.slat == "ept"
    assert "unrestricted_guest" in cpu.vmx_flags
    assert not cpu.hypervisor


def test_ept_found_in_vmx_flags_line_alone() -> None:
    # Kernels that list EPT only on the "vmx flags" line must still be understood.
    text = cpuinfo_text("intel-vtx-ept").replace(" ept vpid ept_ad ", " vpid ")
    cpu = parse_cpuinfo(text, "x86_64")
    assert "ept" not in cpu.flags
    assert cpu.slat == "ept"


def test_amd_with_svm_and_npt() -> None:
    cpu = parse("amd-svm-npt")
    assert (cpu.vendor, cpu.virt_extension, cpu.slat) == ("AuthenticAMD", "svm", "npt")
    assert cpu.virt_extension_name == "AMD-V"
    assert cpu.model_name == "AMD Ryzen 7 5800X 8-Core Processor"


def test_cpu_without_extensions() -> None:
    cpu = parse("no-virt-pentium")
    assert cpu.virt_extension is None
    assert cpu.slat is None
    assert cpu.virt_extension_name == "none"
    # Intel pads model names with runs of spaces; they are collapsed.
    assert cpu.model_name == "Intel(R) Pentium(R) Dual CPU E2180 @ 2.00GHz"


def test_nested_guest_like_this_machine() -> None:
    cpu = parse("nested-guest-xeon")
    assert cpu.hypervisor
    assert cpu.virt_extension is None
    assert cpu.model_name == "Intel(R) Xeon(R) Processor"
    assert cpu.count == 2


def test_aarch64_features_and_implementer() -> None:
    cpu = parse("aarch64-neoverse-n1", arch="aarch64")
    assert cpu.arch == "aarch64"
    assert not cpu.is_x86
    assert cpu.vendor == "ARM"
    assert cpu.model_name == "ARM Neoverse-N1"
    assert {"fp", "asimd", "atomics"} <= cpu.flags
    assert cpu.count == 2
    assert cpu.virt_extension is None


def test_unknown_arm_part_is_shown_raw() -> None:
    text = cpuinfo_text("aarch64-neoverse-n1").replace("0xd0c", "0xfff").replace("0x41", "0x99")
    cpu = parse_cpuinfo(text, "arm64")
    assert cpu.arch == "aarch64"
    assert cpu.vendor == "implementer 0x99"
    assert cpu.model_name == "implementer 0x99 part 0xfff"


def test_empty_text_gives_an_empty_cpu() -> None:
    cpu = parse_cpuinfo("", "x86_64")
    assert cpu.count == 0
    assert cpu.flags == frozenset()
    assert cpu.vendor == ""


@pytest.mark.parametrize(
    ("given", "expected"), [("amd64", "x86_64"), ("ARM64", "aarch64"), ("ppc64le", "ppc64le")]
)
def test_host_arch_aliases(given: str, expected: str) -> None:
    assert host_arch(given) == expected
