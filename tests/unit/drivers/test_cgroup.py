"""The instance cgroup over fake cgroup trees (v1 one hierarchy per controller, v2 unified): what is
made, what limits are written where, usage read back, removal. The real kernel files are exercised
by tests/e2e/test_vm_limits.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.drivers.cgroup import Cgroup, Layout, Limits, cgroup_name, detect_layout
from virtkit.errors import HostCapabilityError
from virtkit.host.cgroups import parse_mounts

HYBRID_MOUNTS = """\
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
COMOUNTED = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"


def test_layouts_are_read_from_the_mounts() -> None:
    hybrid = detect_layout(parse_mounts(HYBRID_MOUNTS))
    assert hybrid.unified is None and hybrid.v1["cpu"] == Path("/sys/fs/cgroup/cpu")
    assert hybrid.v1["memory"] == Path("/sys/fs/cgroup/memory")
    comounted = detect_layout(parse_mounts(COMOUNTED))
    assert comounted.v1["cpu"] == comounted.v1["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert detect_layout(parse_mounts(V2_MOUNTS)).unified == Path("/sys/fs/cgroup")


def test_names_are_unique_per_instance() -> None:
    assert cgroup_name("web1", "8b960daa-1111-2222-3333-444455556666") == "virtkit/web1.8b960daa"


def _v1(tmp_path: Path) -> Layout:
    roots = {name: tmp_path / name for name in ("cpu", "cpuacct", "memory", "pids")}
    for root in roots.values():
        root.mkdir()
    return Layout(v1=roots)


def test_v1_limits_go_to_each_hierarchy(tmp_path: Path) -> None:
    cgroup = Cgroup("virtkit/web1.1234", _v1(tmp_path))
    cgroup.create(Limits(cpu_quota=50_000, memory_max=512 << 20))
    leaf = Path("virtkit/web1.1234")
    assert (tmp_path / "cpu" / leaf / "cpu.cfs_quota_us").read_text() == "50000"
    assert (tmp_path / "cpu" / leaf / "cpu.cfs_period_us").read_text() == "100000"
    assert (tmp_path / "memory" / leaf / "memory.limit_in_bytes").read_text() == str(512 << 20)
    assert (tmp_path / "pids" / leaf).is_dir() and (tmp_path / "cpuacct" / leaf).is_dir()
    cgroup.set(Limits(cpu_quota=None, cpu_period=200_000))
    assert (tmp_path / "cpu" / leaf / "cpu.cfs_quota_us").read_text() == "-1"
    assert (tmp_path / "cpu" / leaf / "cpu.cfs_period_us").read_text() == "200000"
    assert (tmp_path / "memory" / leaf / "memory.limit_in_bytes").read_text() == "-1"
    (tmp_path / "cpuacct" / leaf / "cpuacct.usage").write_text("2500000000\n")
    (tmp_path / "memory" / leaf / "memory.usage_in_bytes").write_text("1048576\n")
    assert cgroup.cpu_seconds() == 2.5 and cgroup.memory_bytes() == 1 << 20


def test_v2_delegates_the_controllers_down_to_the_instance(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    cgroup = Cgroup("virtkit/web1.1234", Layout(unified=tmp_path))
    cgroup.create(Limits(cpu_quota=25_000, memory_max=1 << 30))
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (tmp_path / "virtkit" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    leaf = tmp_path / "virtkit" / "web1.1234"
    assert (leaf / "cpu.max").read_text() == "25000 100000"
    assert (leaf / "memory.max").read_text() == str(1 << 30)
    cgroup.set(Limits())
    assert (leaf / "cpu.max").read_text() == "max 100000" and (leaf / "memory.max").read_text() == "max"
    (leaf / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    assert cgroup.cpu_seconds() == 1.5


def test_a_cpu_allowance_needs_the_cpu_controller(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    cgroup = Cgroup("virtkit/web1.1234", Layout(v1={"memory": tmp_path / "memory"}))
    with pytest.raises(HostCapabilityError, match="no cpu cgroup controller"):
        cgroup.require(Limits(cpu_quota=50_000))
    cgroup.require(Limits(memory_max=1 << 30))  # the ceiling alone is fine


def test_a_failed_limit_removes_what_was_made(tmp_path: Path) -> None:
    layout = _v1(tmp_path)
    leaf = tmp_path / "cpu" / "virtkit" / "web1.1234"
    leaf.mkdir(parents=True)
    (leaf / "cpu.cfs_quota_us").mkdir()  # writing to it fails, as a kernel refusal would
    with pytest.raises(HostCapabilityError, match="cannot write"):
        Cgroup("virtkit/web1.1234", layout).create(Limits(cpu_quota=50_000))
    assert not (tmp_path / "memory" / "virtkit" / "web1.1234").exists()


def test_remove_leaves_nothing_and_tolerates_absence(tmp_path: Path) -> None:
    cgroup = Cgroup("virtkit/web1.1234", _v1(tmp_path))
    cgroup.remove()  # nothing made yet
    for name in ("cpu", "memory"):
        (tmp_path / name / "virtkit" / "web1.1234").mkdir(parents=True)
    cgroup.remove()
    assert not (tmp_path / "cpu" / "virtkit" / "web1.1234").exists()
    assert not (tmp_path / "memory" / "virtkit" / "web1.1234").exists()
