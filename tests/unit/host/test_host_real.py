"""Smoke tests on the real machine: facts read independently must agree with the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtkit.host import Status, VmSupport, run_checks

pytestmark = pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs a Linux /proc")


def _fs_type(path: str) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", path], capture_output=True, text=True, check=False
    ).stdout.strip()


def expected_cgroup_layout() -> str:
    """Independent of virtkit: ask stat(1) what filesystem each cgroup mount point is."""
    if _fs_type("/sys/fs/cgroup") == "cgroup2fs":
        return "v2"
    if os.path.isdir("/sys/fs/cgroup/unified") and _fs_type("/sys/fs/cgroup/unified") == "cgroup2fs":
        return "hybrid"
    return "v1"


def test_real_host(tmp_path: Path) -> None:
    start = time.monotonic()
    report = run_checks(state_root=tmp_path / "virtkit")
    elapsed = time.monotonic() - start
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    assert report.host.hypervisor == ("hypervisor" in flags.split())
    assert report.check("cgroups.version").details["version"] == expected_cgroup_layout()
    assert report.exit_code in (0, 1)
    json.dumps(report.to_dict())
    assert elapsed < 2.0, f"host check took {elapsed:.2f}s"


def test_real_host_kvm() -> None:
    if not os.path.exists("/dev/kvm"):
        pytest.skip("no /dev/kvm here")
    report = run_checks()
    assert report.check("kvm.device").status is Status.PASS
    assert report.check("kvm.device").details["char_device"] is True
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert report.check("kvm.api").status is Status.PASS
        pvm = os.path.exists("/sys/module/kvm_pvm")
        expected = VmSupport.EMULATED if pvm else VmSupport.HARDWARE
        assert report.verdict.vms in (expected, VmSupport.UNAVAILABLE)
    assert "functional KVM test not run" in report.check("kvm.functional").summary


def test_importing_virtkit_host_stays_light() -> None:
    code = (
        "import sys, virtkit.host; "
        "heavy = [m for m in ('pydantic', 'rich', 'click') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    root = Path(__file__).resolve().parents[3]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
