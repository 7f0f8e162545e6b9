"""The Check/Verdict vocabulary guards its own rules."""

from __future__ import annotations

import pytest

from virtkit.host import Check, ContainerSupport, KvmFunctional, Status, Verdict, VmSupport


@pytest.mark.parametrize("status", [Status.WARN, Status.FAIL])
def test_warn_and_fail_need_a_remedy(status: Status) -> None:
    with pytest.raises(ValueError, match="without a remedy"):
        Check("kvm.device", status, "missing")


@pytest.mark.parametrize("bad_id", ["KVM.device", "kvm", "kvm device", ".kvm", "kvm."])
def test_ids_are_dotted_lowercase(bad_id: str) -> None:
    with pytest.raises(ValueError, match="dotted lowercase"):
        Check(bad_id, Status.PASS, "ok")


def test_group_comes_from_the_id() -> None:
    check = Check("tools.qemu-system-x86_64", Status.PASS, "ok")
    assert check.group == "tools"
    assert check.to_dict()["group"] == "tools"


def test_details_become_plain_json() -> None:
    check = Check("cpu.model", Status.INFO, "x", details={"a": ("x", "y"), "b": {"c": [1, None]}})
    assert check.to_dict()["details"] == {"a": ["x", "y"], "b": {"c": [1, None]}}


def test_summary_line_wording() -> None:
    verdict = Verdict(
        VmSupport.EMULATED, "no /dev/kvm", KvmFunctional.NOT_RUN, ContainerSupport.UNAVAILABLE, "no runc"
    )
    assert verdict.summary_line() == "VMs: emulated (TCG) (no /dev/kvm); containers: not available (no runc)"
