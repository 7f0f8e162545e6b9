"""run_checks end to end on fake hosts: verdicts, exit codes and the --json document."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hosttree import ALL_TOOLS, MakeTree, ioctl_denied, ioctl_ok, run_tree

from virtkit.host import (
    ContainerSupport,
    FunctionalProbeResult,
    KvmFunctional,
    Report,
    Status,
    VmSupport,
)

WITHOUT_QEMU = tuple(t for t in ALL_TOOLS if not t.startswith("qemu-system"))
WITHOUT_RUNTIMES = tuple(t for t in ALL_TOOLS if t not in ("runc", "crun"))


def test_good_intel_host(make_tree: MakeTree) -> None:
    report = run_tree(make_tree())
    assert report.exit_code == 0
    assert report.verdict.vms is VmSupport.HARDWARE
    assert report.verdict.kvm_functional is KvmFunctional.NOT_RUN
    assert "possible, unverified" in report.verdict.vms_label
    assert "functional KVM test not run" in report.verdict.vms_reason
    assert report.verdict.containers is ContainerSupport.AVAILABLE
    assert report.verdict.oci_runtime == "crun"  # cgroup v2: crun preferred
    assert report.host.virtualization == "vmx"
    assert report.host.slat == "ept"
    assert report.check("host.usable").status is Status.PASS


def test_functional_probe_pass_makes_acceleration_verified(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(), kvm_probe=lambda: FunctionalProbeResult(True, "busybox init reached", 0.3))
    assert report.verdict.vms is VmSupport.HARDWARE
    assert report.verdict.kvm_functional is KvmFunctional.PASSED
    assert report.verdict.vms_label == "hardware-accelerated"


def test_nested_host_like_this_one_where_guests_hang(make_tree: MakeTree) -> None:
    tree = make_tree(
        cpuinfo="nested-guest-xeon", cgroup="hybrid", kvm_modules=("kvm", "kvm_pvm"), nested=None
    )
    report = run_tree(tree, kvm_probe=lambda: FunctionalProbeResult(False, "guest hung: no output in 10s"))
    assert report.exit_code == 0
    assert report.host.hypervisor
    assert report.verdict.vms is VmSupport.EMULATED
    assert report.verdict.kvm_functional is KvmFunctional.FAILED
    assert "guest hung" in report.verdict.vms_reason
    assert "kvm_pvm" in report.verdict.vms_reason
    assert report.verdict.oci_runtime == "runc"  # hybrid: crun refuses it
    assert report.check("kvm.functional").status is Status.WARN
    assert report.check("cpu.virt-flags").status is Status.WARN


def test_pvm_without_functional_probe_is_emulated(make_tree: MakeTree) -> None:
    tree = make_tree(
        cpuinfo="nested-guest-xeon", cgroup="hybrid", kvm_modules=("kvm", "kvm_pvm"), nested=None
    )
    report = run_tree(tree)
    assert report.verdict.vms is VmSupport.EMULATED
    assert report.verdict.kvm_functional is KvmFunctional.NOT_RUN
    assert report.verdict.vms_label == "emulated (TCG)"
    assert "only PVM-enabled guest kernels" in report.verdict.vms_reason


def test_pvm_with_passing_probe_is_hardware(make_tree: MakeTree) -> None:
    tree = make_tree(cpuinfo="nested-guest-xeon", kvm_modules=("kvm", "kvm_pvm"), nested=None)
    report = run_tree(tree, kvm_probe=lambda: FunctionalProbeResult(True, "pvm guest reached init", 0.5))
    assert report.verdict.vms is VmSupport.HARDWARE


def test_no_kvm_is_emulated_and_still_exit_zero(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(cpuinfo="no-virt-pentium", kvm=False, kvm_modules=()))
    assert report.exit_code == 0
    assert report.verdict.vms is VmSupport.EMULATED
    assert report.verdict.vms_label == "emulated (TCG)"
    assert "/dev/kvm is missing" in report.verdict.vms_reason
    assert report.check("kvm.device").status is Status.WARN
    assert not report.check("kvm.device").required


def test_kvm_permission_denied_is_emulated(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(), kvm_ioctl=ioctl_denied)
    assert report.verdict.vms is VmSupport.EMULATED
    assert "Permission denied" in report.verdict.vms_reason
    assert report.exit_code == 0


def test_no_qemu_vms_unavailable_but_containers_keep_exit_zero(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(), tools=WITHOUT_QEMU)
    assert report.verdict.vms is VmSupport.UNAVAILABLE
    assert "apt-get install qemu-system-x86" in report.verdict.vms_reason
    assert report.exit_code == 0


def test_no_runtime_containers_unavailable_but_vms_keep_exit_zero(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(), tools=WITHOUT_RUNTIMES)
    assert report.verdict.containers is ContainerSupport.UNAVAILABLE
    assert "no OCI runtime" in report.verdict.containers_reason
    assert report.exit_code == 0


def test_nothing_can_run_exits_one(make_tree: MakeTree) -> None:
    tools = tuple(t for t in WITHOUT_QEMU if t not in ("runc", "crun"))
    report = run_tree(make_tree(), tools=tools)
    usable = report.check("host.usable")
    assert usable.status is Status.FAIL
    assert usable.required
    assert usable.remedy is not None and "qemu-system-x86" in usable.remedy and "runc" in usable.remedy
    assert report.exit_code == 1


def test_no_cgroups_exits_one(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(cgroup="none"))
    assert report.check("cgroups.version").status is Status.FAIL
    assert report.verdict.containers is ContainerSupport.UNAVAILABLE
    assert report.exit_code == 1


def test_missing_pid_namespace_exits_one(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(namespaces=("mnt", "uts", "ipc", "net", "user", "cgroup")))
    assert report.exit_code == 1
    assert "missing namespaces pid" in report.verdict.containers_reason


def test_overlay_absent_makes_containers_unavailable_not_exit_one(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(overlay="absent"))
    assert report.check("kernel.overlayfs").status is Status.FAIL
    assert report.verdict.containers is ContainerSupport.UNAVAILABLE
    assert report.exit_code == 0  # VMs still work, so the host is usable


def test_crun_only_on_hybrid_is_available_with_caveat(make_tree: MakeTree) -> None:
    tools = tuple(t for t in ALL_TOOLS if t != "runc")
    report = run_tree(make_tree(cgroup="hybrid"), tools=tools)
    assert report.verdict.containers is ContainerSupport.AVAILABLE
    assert report.verdict.oci_runtime == "crun"
    assert "install runc" in report.verdict.containers_reason


def test_aarch64_host(make_tree: MakeTree) -> None:
    tree = make_tree(cpuinfo="aarch64-neoverse-n1", kvm_modules=("kvm",), nested=None)
    report = run_tree(tree, arch="aarch64", tools=[t for t in ALL_TOOLS if t != "qemu-system-x86_64"])
    assert report.host.arch == "aarch64"
    assert report.verdict.vms is VmSupport.HARDWARE  # qemu-system-aarch64 is the host's own
    assert report.check("tools.qemu-system-x86_64").status is Status.WARN
    assert report.check("cpu.virt-flags").status is Status.INFO
    assert report.exit_code == 0


def test_not_linux_exits_two(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(), system="Darwin")
    assert report.exit_code == 2
    assert report.ids() == ["host.platform"]
    assert "Darwin" in report.check("host.platform").summary


def test_unreadable_cpuinfo_exits_two(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(cpuinfo=None))
    assert report.exit_code == 2
    assert report.check("host.platform").status is Status.FAIL
    assert report.verdict.vms is VmSupport.UNAVAILABLE
    json.dumps(report.to_dict())


def test_low_space_warns_with_min_free(make_tree: MakeTree) -> None:
    report = run_tree(make_tree(), min_free=1 << 62)
    assert report.check("storage.free-space").status is Status.WARN
    assert report.exit_code == 0


# The --json document


def assert_well_formed(report: Report) -> None:
    ids = report.ids()
    assert len(ids) == len(set(ids)), "check ids must be unique"
    for check in report.checks:
        assert re.fullmatch(r"[a-z][a-z0-9]*(\.[a-z0-9][a-z0-9_-]*)+", check.id)
        if check.status in (Status.WARN, Status.FAIL):
            assert check.remedy, check.id


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"cpuinfo": "amd-svm-npt", "kvm_modules": ("kvm", "kvm_amd"), "cgroup": "v1"},
        {"cpuinfo": "intel-vtx-disabled", "kvm": False, "kvm_modules": ("kvm",), "overlay": "module"},
        {
            "cpuinfo": "nested-guest-xeon",
            "cgroup": "hybrid",
            "tun": False,
            "vhost_net": False,
            "iommu": "tables",
        },
    ],
)
def test_every_report_is_well_formed(make_tree: MakeTree, options: dict[str, object]) -> None:
    assert_well_formed(run_tree(make_tree(**options)))


def test_to_dict_shape_and_json_round_trip(make_tree: MakeTree) -> None:
    report = run_tree(make_tree())
    doc = report.to_dict()
    assert json.loads(json.dumps(doc)) == doc
    assert list(doc) == ["schema", "host", "checks", "verdict", "exit_code"]
    assert doc["schema"] == 1
    assert doc["exit_code"] == 0
    assert isinstance(doc["host"], dict)
    assert set(doc["host"]) == {
        "arch", "kernel", "os", "cpu_vendor", "cpu_model", "cpus", "hypervisor", "virtualization", "slat",
    }  # fmt: skip
    assert doc["host"]["kernel"] == "6.1.0-13-amd64"
    checks = doc["checks"]
    assert isinstance(checks, list)
    for item in checks:
        assert isinstance(item, dict)
        assert list(item) == ["id", "group", "status", "summary", "remedy", "required", "details"]
        assert item["status"] in ("PASS", "WARN", "FAIL", "INFO")
        assert isinstance(item["id"], str) and item["id"].startswith(f"{item['group']}.")
    verdict = doc["verdict"]
    assert isinstance(verdict, dict)
    assert verdict["vms"] == "hardware-accelerated"
    assert verdict["kvm_functional"] == "not-run"
    assert verdict["containers"] == "available"
    assert {"vms_reason", "containers_reason", "oci_runtime", "summary"} <= set(verdict)


def test_check_ids_are_the_same_on_good_and_bad_hosts(make_tree: MakeTree) -> None:
    good = run_tree(make_tree()).ids()
    bad = run_tree(make_tree(kvm=False, cgroup="none", tun=False), kvm_ioctl=ioctl_ok).ids()
    assert good == bad


def test_unknown_check_id_raises_key_error(make_tree: MakeTree) -> None:
    with pytest.raises(KeyError):
        run_tree(make_tree()).check("cpu.nope")


def test_state_root_default_is_not_under_sysroot(make_tree: MakeTree, tmp_path: Path) -> None:
    report = run_tree(make_tree(), state_root=tmp_path / "root")
    details = report.check("storage.free-space").details
    assert details["state_root"] == str(tmp_path / "root")
    assert details["measured"] == str(tmp_path)


def test_probe_that_could_not_run_gives_no_verdict(make_tree: MakeTree) -> None:
    not_run = FunctionalProbeResult(False, "not run: no guest kernel available", None, {"ran": False})
    report = run_tree(make_tree(), kvm_probe=lambda: not_run)
    assert report.verdict.kvm_functional is KvmFunctional.NOT_RUN
    assert report.check("kvm.functional").status is Status.INFO
    assert "not run: no guest kernel available" in report.check("kvm.functional").summary
