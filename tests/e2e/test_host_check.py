"""`virtkit host check` as a user runs it on this very machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error


def test_report_on_this_machine(virtkit: Cli, state_root: Path) -> None:
    result = virtkit("host", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for check_id in ("cpu.virt-flags", "kvm.device", "cgroups.version", "kernel.overlayfs", "tools.runc"):
        assert check_id in out
    assert "VMs: " in out and "containers: available" in out
    cpuinfo = Path("/proc/cpuinfo").read_text()
    if " hypervisor" in cpuinfo:
        assert "cpu.hypervisor" in out and "this host is a virtual machine" in out
    assert not state_root.exists(), "a read-only check must not create the state root"


def test_json_is_a_stable_document(virtkit: Cli) -> None:
    result = virtkit("host", "check", "--json")
    assert result.returncode == 0, result.stderr
    tool = subprocess.run(
        [sys.executable, "-m", "json.tool"], input=result.stdout, capture_output=True, text=True
    )
    assert tool.returncode == 0
    document = json.loads(result.stdout)
    assert document["schema"] == 1
    assert set(document) == {"schema", "host", "checks", "verdict", "exit_code"}
    assert document["exit_code"] == 0
    ids = [check["id"] for check in document["checks"]]
    assert len(ids) == len(set(ids))
    for check in document["checks"]:
        assert check["status"] in ("PASS", "WARN", "FAIL", "INFO")
        if check["status"] in ("WARN", "FAIL"):
            assert check["remedy"]
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    assert document["host"]["hypervisor"] == ("hypervisor" in flags.split())
    assert document["verdict"]["containers"] == "available"
    global_flag = virtkit("--json", "host", "check")
    assert json.loads(global_flag.stdout)["host"] == document["host"]


def test_min_free_threshold(virtkit: Cli) -> None:
    result = virtkit("host", "check", "--json", "--min-free", "1EiB")
    document = json.loads(result.stdout)
    space = next(check for check in document["checks"] if check["id"] == "storage.free-space")
    assert space["status"] == "WARN"
    assert result.returncode == 0  # low space warns; it does not make the host unusable


def test_bad_min_free(virtkit: Cli) -> None:
    for bad in ("lots", "-1G", "12XB", "1e3"):
        assert_clear_error(virtkit("host", "check", "--min-free", bad), 2, "--min-free size")


def _kvm_openable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    return True


def test_functional_kvm_probe(virtkit: Cli) -> None:
    """The check boots a test guest under KVM once per boot; the verdict follows what it finds."""
    started = time.monotonic()
    first = virtkit("host", "check", "--json")
    assert first.returncode == 0, first.stderr
    assert time.monotonic() - started < 20, "the functional probe must be bounded (~8 s)"
    document = json.loads(first.stdout)
    functional = next(check for check in document["checks"] if check["id"] == "kvm.functional")
    verdict = document["verdict"]
    if not _kvm_openable() or verdict["vms"] == "unavailable" or verdict["kvm_functional"] == "not-run":
        pytest.skip("no usable /dev/kvm or no QEMU: nothing to probe")
    if functional["details"].get("ran") is False:
        pytest.skip(f"the probe could not run here: {functional['summary']}")
    if functional["details"]["ok"]:
        assert (verdict["vms"], verdict["kvm_functional"]) == ("hardware-accelerated", "passed")
        assert functional["status"] == "PASS"
    else:
        assert (verdict["vms"], verdict["kvm_functional"]) == ("emulated", "failed")
        assert functional["status"] == "WARN"
        assert "KVM device present but cannot run guests" in functional["summary"]
    if Path("/sys/module/kvm_pvm").is_dir():  # this machine: nested kvm_pvm, ordinary guests hang
        assert verdict["kvm_functional"] == "failed"
    again = virtkit("host", "check", "--json")
    cached = next(c for c in json.loads(again.stdout)["checks"] if c["id"] == "kvm.functional")
    assert cached["details"]["cached"] is True, "the verdict is kept for the rest of the boot"
    assert cached["summary"] == functional["summary"]
