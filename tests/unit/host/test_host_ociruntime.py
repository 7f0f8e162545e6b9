"""The containers.oci-runtime line and the container verdict, from OCI runtime probe verdicts."""

from __future__ import annotations

from hosttree import MakeTree, run_tree

from virtkit.host import ContainerSupport, Status
from virtkit.host.ociruntime import OciRuntimeVerdict, RuntimeTrial, oci_runtime_check, run_oci_probe

REFUSAL = "cgroups in hybrid mode not supported, drop all controllers from cgroupv2"
CRUN_REFUSED = RuntimeTrial("crun", "/usr/bin/crun", "1.8.1", False, REFUSAL, 0.03)
RUNC_WORKS = RuntimeTrial("runc", "/usr/sbin/runc", "1.1.5", True, "", 0.12)
RUNC_REFUSED = RuntimeTrial("runc", "/usr/sbin/runc", "1.1.5", False, "permission denied", 0.05)


def test_the_winner_and_why_the_other_was_refused() -> None:
    check = oci_runtime_check(OciRuntimeVerdict((CRUN_REFUSED, RUNC_WORKS)))
    assert check.id == "containers.oci-runtime" and check.status is Status.PASS
    assert check.summary == (
        "containers run with runc 1.1.5 (/usr/sbin/runc): a test container ran in 0.12s; "
        f"crun 1.8.1 refused: {REFUSAL}"
    )
    trials = check.details["trials"]
    assert isinstance(trials, list) and [t["name"] for t in trials] == ["crun", "runc"]
    alone = oci_runtime_check(OciRuntimeVerdict((RuntimeTrial("crun", "/usr/bin/crun", "1.12", True),)))
    assert alone.status is Status.PASS and "refused" not in alone.summary


def test_nothing_works_nothing_installed_nothing_tried() -> None:
    failed = oci_runtime_check(OciRuntimeVerdict((CRUN_REFUSED, RUNC_REFUSED)))
    assert failed.status is Status.FAIL and not failed.required and failed.remedy
    assert (
        "crun 1.8.1 refused: cgroups" in failed.summary and "runc 1.1.5 refused: permission" in failed.summary
    )
    missing = oci_runtime_check(OciRuntimeVerdict())
    assert missing.status is Status.WARN and "apt-get install runc" in (missing.remedy or "")
    skipped = oci_runtime_check(OciRuntimeVerdict(not_run="it needs root"))
    assert skipped.status is Status.INFO and skipped.summary.endswith("not run: it needs root")
    assert oci_runtime_check(None).status is Status.INFO


def test_a_crashing_probe_is_a_probe_that_did_not_run() -> None:
    def crash() -> OciRuntimeVerdict:
        raise RuntimeError("boom")

    verdict = run_oci_probe(crash)
    assert not verdict.ran and "RuntimeError: boom" in verdict.not_run


def test_the_probe_decides_the_runtime_of_the_verdict(make_tree: MakeTree) -> None:
    tree = make_tree()  # cgroup v2: crun would be guessed
    assert run_tree(tree).verdict.oci_runtime == "crun"
    assert run_tree(tree).check("containers.oci-runtime").status is Status.INFO
    report = run_tree(tree, oci_probe=lambda: OciRuntimeVerdict((CRUN_REFUSED, RUNC_WORKS)))
    assert report.verdict.oci_runtime == "runc"
    assert report.verdict.containers is ContainerSupport.AVAILABLE
    assert report.check("containers.oci-runtime").status is Status.PASS
    broken = run_tree(tree, oci_probe=lambda: OciRuntimeVerdict((CRUN_REFUSED, RUNC_REFUSED)))
    assert broken.verdict.containers is ContainerSupport.UNAVAILABLE and broken.verdict.oci_runtime is None
    assert "no OCI runtime runs a test container" in broken.verdict.containers_reason
    assert broken.exit_code == 0, "VMs still run: not a required failure"
    untested = run_tree(tree, oci_probe=lambda: OciRuntimeVerdict(not_run="it needs root"))
    assert untested.verdict.oci_runtime == "crun"


def test_hybrid_tested_crun_needs_no_caveat(make_tree: MakeTree) -> None:
    tree = make_tree(cgroup="hybrid")
    crun_works = RuntimeTrial("crun", "/usr/bin/crun", "1.14", True, "", 0.02)
    report = run_tree(tree, oci_probe=lambda: OciRuntimeVerdict((crun_works,)))
    assert report.verdict.oci_runtime == "crun" and "may refuse" not in report.verdict.containers_reason
