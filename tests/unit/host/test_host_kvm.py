"""KVM probes and kvm.* checks: device, access, ioctls, modules, nested, the functional hook."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hosttree import MakeTree, cpuinfo_text, ioctl_denied, ioctl_ok

from virtkit.host import Check, FunctionalProbeResult, KvmIoctlResult, Status, parse_cpuinfo, probe_kvm_ioctl
from virtkit.host.kvm import FunctionalProbe, KvmIoctlProber, KvmState, probe_kvm
from virtkit.host.kvmchecks import kvm_checks


def checks_for(
    root: Path,
    cpu: str = "intel-vtx-ept",
    *,
    ioctl: KvmIoctlProber,
    functional: FunctionalProbe | None = None,
) -> dict[str, Check]:
    state = probe_kvm(root, ioctl, functional)
    return {c.id: c for c in kvm_checks(state, parse_cpuinfo(cpuinfo_text(cpu), "x86_64"))}


def test_working_kvm_passes_but_functional_test_is_not_run(make_tree: MakeTree) -> None:
    got = checks_for(make_tree(), ioctl=ioctl_ok)
    for check_id in ("kvm.device", "kvm.access", "kvm.api", "kvm.module"):
        assert got[check_id].status is Status.PASS, check_id
    functional = got["kvm.functional"]
    assert functional.status is Status.INFO
    assert "functional KVM test not run" in functional.summary
    assert "unverified" in functional.summary
    assert got["kvm.nested"].summary.endswith("enabled (kvm_intel nested=Y)")


def test_missing_device_warns_with_modprobe_remedy_and_skips_the_rest(make_tree: MakeTree) -> None:
    calls: list[Path] = []

    def ioctl(path: Path) -> KvmIoctlResult:
        calls.append(path)
        return ioctl_ok(path)

    got = checks_for(make_tree(kvm=False), ioctl=ioctl)
    assert calls == []
    assert got["kvm.device"].status is Status.WARN
    assert got["kvm.device"].remedy is not None and "modprobe kvm_intel" in got["kvm.device"].remedy
    assert got["kvm.access"].status is Status.INFO
    assert got["kvm.api"].status is Status.INFO


def test_missing_device_on_nested_guest_points_at_outer_host(make_tree: MakeTree) -> None:
    got = checks_for(make_tree(kvm=False, kvm_modules=()), cpu="nested-guest-xeon", ioctl=ioctl_ok)
    remedy = got["kvm.device"].remedy
    assert remedy is not None and "nested virtualization on the outer host" in remedy
    assert got["kvm.module"].status is Status.INFO


def test_permission_denied_suggests_kvm_group(make_tree: MakeTree) -> None:
    got = checks_for(make_tree(), ioctl=ioctl_denied)
    assert got["kvm.access"].status is Status.WARN
    assert got["kvm.access"].remedy is not None and "usermod -aG kvm" in got["kvm.access"].remedy
    assert got["kvm.api"].status is Status.INFO


def test_wrong_api_version_warns(make_tree: MakeTree) -> None:
    result = KvmIoctlResult("api", api_version=11, error="API version 11, expected 12")
    got = checks_for(make_tree(), ioctl=lambda _p: result)
    assert got["kvm.access"].status is Status.PASS
    assert got["kvm.api"].status is Status.WARN
    assert got["kvm.api"].details["api_version"] == 11


def test_create_vm_busy_names_the_other_hypervisor(make_tree: MakeTree) -> None:
    result = KvmIoctlResult("create", api_version=12, errno=errno.EBUSY, error="Device or resource busy")
    got = checks_for(make_tree(), ioctl=lambda _p: result)
    assert got["kvm.api"].status is Status.WARN
    assert got["kvm.api"].remedy is not None and "VirtualBox" in got["kvm.api"].remedy


def test_kvm_loaded_without_vendor_module_hints_at_firmware(make_tree: MakeTree) -> None:
    got = checks_for(make_tree(kvm=False, kvm_modules=("kvm",)), ioctl=ioctl_ok)
    module = got["kvm.module"]
    assert module.status is Status.WARN
    assert module.summary.startswith("kvm is loaded but kvm_intel is not loaded")
    assert module.remedy is not None and "disabled by bios" in module.remedy


def test_pvm_module_is_explained(make_tree: MakeTree) -> None:
    got = checks_for(make_tree(kvm_modules=("kvm", "kvm_pvm")), cpu="nested-guest-xeon", ioctl=ioctl_ok)
    assert got["kvm.module"].status is Status.INFO
    assert "PVM" in got["kvm.module"].summary
    assert got["kvm.nested"].summary.startswith("nested parameter not readable")


def test_nested_disabled_gives_the_modprobe_option(make_tree: MakeTree) -> None:
    got = checks_for(make_tree(kvm_modules=("kvm", "kvm_amd"), nested="0"), cpu="amd-svm-npt", ioctl=ioctl_ok)
    nested = got["kvm.nested"]
    assert "disabled (kvm_amd nested=0)" in nested.summary
    assert nested.remedy is not None and "options kvm_amd nested=1" in nested.remedy


def test_functional_probe_pass_and_fail(make_tree: MakeTree) -> None:
    tree = make_tree()
    ok = checks_for(tree, ioctl=ioctl_ok, functional=lambda: FunctionalProbeResult(True, "busybox init", 0.4))
    assert ok["kvm.functional"].status is Status.PASS
    assert "0.40s" in ok["kvm.functional"].summary
    bad = checks_for(tree, ioctl=ioctl_ok, functional=lambda: FunctionalProbeResult(False, "no output in 5s"))
    assert bad["kvm.functional"].status is Status.WARN
    assert "no output in 5s" in bad["kvm.functional"].summary
    assert bad["kvm.functional"].remedy is not None and "TCG" in bad["kvm.functional"].remedy


def test_functional_probe_crash_is_a_failed_probe(make_tree: MakeTree) -> None:
    def crash() -> FunctionalProbeResult:
        raise RuntimeError("qemu exploded")

    state = probe_kvm(make_tree(), ioctl_ok, crash)
    assert state.functional is not None
    assert not state.functional.ok
    assert "qemu exploded" in state.functional.summary


def test_functional_probe_not_run_when_ioctls_fail(make_tree: MakeTree) -> None:
    ran: list[bool] = []

    def probe() -> FunctionalProbeResult:
        ran.append(True)
        return FunctionalProbeResult(True, "ok")

    state = probe_kvm(make_tree(), ioctl_denied, probe)
    assert ran == []
    assert state.functional is None
    assert not state.usable


def test_state_records_device_facts(make_tree: MakeTree) -> None:
    state = probe_kvm(make_tree(), ioctl_ok)
    assert isinstance(state, KvmState)
    assert state.exists and state.usable
    assert state.char_device is False  # the fake is a regular file
    assert state.mode is not None and len(state.mode) == 4


# The real prober: only meaningful on a real device; a fake file and a missing path must not crash it.


def test_real_prober_on_missing_path(tmp_path: Path) -> None:
    result = probe_kvm_ioctl(tmp_path / "kvm")
    assert result.failed_stage == "open"
    assert result.errno == errno.ENOENT


def test_real_prober_on_regular_file_fails_at_api(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"
    fake.write_text("")
    result = probe_kvm_ioctl(fake)
    assert result.failed_stage == "api"
    assert result.errno == errno.ENOTTY


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm on this host")
def test_real_prober_on_dev_kvm() -> None:
    result = probe_kvm_ioctl()
    assert result.ok, result
    assert result.api_version == 12
