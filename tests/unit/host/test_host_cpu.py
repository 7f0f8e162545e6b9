"""cpu.* checks: flags interpreted, nested guests recognised, firmware-disabled VT only ever a hint."""

from __future__ import annotations

from hosttree import cpuinfo_text

from virtkit.host import Check, Status, parse_cpuinfo
from virtkit.host.cpu import cpu_checks, firmware_disabled_hint


def checks(name: str, arch: str = "x86_64", dmi: str | None = None) -> dict[str, Check]:
    cpu = parse_cpuinfo(cpuinfo_text(name), arch)
    return {c.id: c for c in cpu_checks(cpu, dmi)}


def test_intel_passes_and_explains_flags() -> None:
    got = checks("intel-vtx-ept")
    assert got["cpu.virt-flags"].status is Status.PASS
    assert "Intel VT-x" in got["cpu.virt-flags"].summary
    assert got["cpu.slat"].status is Status.PASS
    assert "ept" in got["cpu.slat"].summary
    meanings = got["cpu.virt-flags"].details["meanings"]
    assert isinstance(meanings, dict) and set(meanings) == {"vmx", "ept"}
    assert got["cpu.hypervisor"].summary.startswith("no hypervisor flag")


def test_amd_passes() -> None:
    got = checks("amd-svm-npt")
    assert got["cpu.virt-flags"].status is Status.PASS
    assert "AMD-V" in got["cpu.virt-flags"].summary
    assert got["cpu.slat"].status is Status.PASS
    assert "npt" in got["cpu.slat"].summary


def test_nested_guest_warns_with_nested_remedy() -> None:
    got = checks("nested-guest-xeon", dmi="QEMU Standard PC (Q35 + ICH9, 2009)")
    flags = got["cpu.virt-flags"]
    assert flags.status is Status.WARN
    assert flags.remedy is not None and "nested" in flags.remedy
    assert flags.details["firmware_disabled_hint"] is False  # a guest is never blamed on its BIOS
    assert got["cpu.hypervisor"].details["hypervisor_flag"] is True
    assert "QEMU Standard PC" in got["cpu.hypervisor"].summary
    assert got["cpu.slat"].status is Status.INFO


def test_firmware_disabled_is_a_warn_hint_never_a_fail() -> None:
    cpu = parse_cpuinfo(cpuinfo_text("intel-vtx-disabled"), "x86_64")
    assert firmware_disabled_hint(cpu)
    flags = {c.id: c for c in cpu_checks(cpu)}["cpu.virt-flags"]
    assert flags.status is Status.WARN
    assert "firmware" in flags.summary
    assert flags.remedy is not None and "BIOS/UEFI" in flags.remedy


def test_old_cpu_without_extensions_is_not_blamed_on_firmware() -> None:
    cpu = parse_cpuinfo(cpuinfo_text("no-virt-pentium"), "x86_64")
    assert not firmware_disabled_hint(cpu)
    flags = {c.id: c for c in cpu_checks(cpu)}["cpu.virt-flags"]
    assert flags.status is Status.WARN
    assert "no hardware virtualization" in flags.summary
    assert "TCG" in flags.summary


def test_vmx_without_ept_warns_about_shadow_paging() -> None:
    text = cpuinfo_text("intel-vtx-ept").replace(" ept ", " ")
    cpu = parse_cpuinfo(text, "x86_64")
    assert cpu.virt_extension == "vmx"
    assert cpu.slat is None
    slat = {c.id: c for c in cpu_checks(cpu)}["cpu.slat"]
    assert slat.status is Status.WARN
    assert "shadow page tables" in slat.summary


def test_aarch64_is_info_not_warn() -> None:
    got = checks("aarch64-neoverse-n1", arch="aarch64")
    assert got["cpu.virt-flags"].status is Status.INFO
    assert "/dev/kvm" in got["cpu.virt-flags"].summary
    assert got["cpu.slat"].status is Status.INFO
    assert got["cpu.model"].summary.startswith("ARM Neoverse-N1 (ARM, aarch64, 2 logical CPUs)")
