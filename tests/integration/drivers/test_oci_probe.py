"""The OCI runtime probe for real: test containers run with the installed crun and runc.

On this machine (cgroup v1 hybrid) crun 1.8 refuses ("cgroups in hybrid mode not supported") and
runc 1.1 works, so the verdict is runc with crun's refusal; elsewhere the first working one wins.
Each trial leaves nothing behind (no cgroup, no temporary directory, no runtime state); the
verdict is read back from the state root's cache until a runtime binary changes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from virtkit.drivers.oci import probe
from virtkit.host.cgroups import probe_cgroups, read_mounts
from virtkit.ops.host import check_host

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="containers run as root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc"),
    pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="needs busybox-static"),
]

HYBRID = probe_cgroups(Path("/")).version == "hybrid"
CRUN = shutil.which("crun")


def _leftover_cgroups() -> list[Path]:
    found: list[Path] = []
    for mount in read_mounts(Path("/")):
        if mount.fstype in ("cgroup", "cgroup2"):
            found += Path(mount.target, "virtkit").glob("virtkit-oci-probe-*")
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    state_root = tmp_path / "root"
    state_root.mkdir()
    return state_root


def _copies(tmp_path: Path) -> dict[str, str]:
    """The installed runtimes copied into a directory of their own: binaries the test may touch."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    copies = {}
    for name in probe.CANDIDATES:
        found = shutil.which(name)
        if found is not None:
            copies[name] = str(shutil.copy2(found, bin_dir / name))
    return copies


def test_the_working_runtime_wins_and_the_refusal_is_reported(root: Path) -> None:
    began = time.monotonic()
    verdict = probe.probe_cached(root)
    took = time.monotonic() - began
    chosen = verdict.chosen
    assert verdict.ran and not verdict.cached and chosen is not None, verdict
    if HYBRID:
        assert chosen.name == "runc" and chosen.path == shutil.which("runc")
        if CRUN is not None:
            crun = verdict.trials[0]
            assert (crun.name, crun.ok) == ("crun", False)
            assert "hybrid" in crun.error, crun.error
            assert "crun" in verdict.refusals() and "refused" in verdict.refusals()
    assert took < 5, f"the probe took {took:.2f}s"
    assert _leftover_cgroups() == []
    assert not any(p.name.startswith("oci-probe-") for p in (root / "run").iterdir())
    document = json.loads((root / probe.CACHE_FILE).read_text())
    assert document["trials"][-1]["name"] == chosen.name and document["trials"][-1]["ok"] is True


def test_the_second_call_reads_the_cache_and_a_changed_binary_probes_again(
    root: Path, tmp_path: Path
) -> None:
    copies = _copies(tmp_path)
    which = copies.get
    first = probe.probe_cached(root, which=which)
    assert first.chosen is not None and not first.cached
    began = time.monotonic()
    second = probe.probe_cached(root, which=which)
    hit = time.monotonic() - began
    assert second.cached and second.trials == first.trials and second.probed_at == first.probed_at
    assert hit < 0.5, f"a cache hit took {hit:.3f}s"
    stat = os.stat(copies["runc"])
    os.utime(copies["runc"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # as an upgrade would
    third = probe.probe_cached(root, which=which)
    assert not third.cached and third.chosen is not None
    key = json.loads((root / probe.CACHE_FILE).read_text())["key"]
    runc_key = next(r for r in key["runtimes"] if r["name"] == "runc")
    assert runc_key["mtime_ns"] == stat.st_mtime_ns + 1_000_000_000, "the new verdict replaced the old"
    assert probe.probe_cached(root, which=which).cached


def test_concurrent_probes_leave_one_readable_verdict(root: Path) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        verdicts = list(pool.map(lambda _i: probe.probe_cached(root), range(3)))
    assert all(v.chosen is not None for v in verdicts)
    assert len({v.chosen.path for v in verdicts if v.chosen is not None}) == 1
    assert probe.probe_cached(root).cached
    assert [p.name for p in (root / "cache").iterdir()] == ["oci-runtime.json"]
    assert _leftover_cgroups() == []


def test_without_a_state_root_nothing_is_written(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    assert probe.probe_cached(absent).chosen is not None
    assert not absent.exists()


def test_host_check_reports_the_runtime(root: Path) -> None:
    report = check_host(root, probe_kvm=False)
    check = report.check("containers.oci-runtime")
    assert check.status.value == "PASS", check
    chosen = probe.probe_cached(root).chosen
    assert chosen is not None and report.verdict.oci_runtime == chosen.name
    if HYBRID and CRUN is not None:
        assert "containers run with runc" in check.summary and "crun" in check.summary
        assert "refused: cgroups in hybrid mode not supported" in check.summary
