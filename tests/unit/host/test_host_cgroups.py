"""cgroup layout detection (v1 / v2 / hybrid / none) and controller availability."""

from __future__ import annotations

from pathlib import Path

from hosttree import MakeTree

from virtkit.host import Status
from virtkit.host.cgroups import WANTED, cgroup_checks, parse_mounts, probe_cgroups

# Recorded from this project's CI host (Debian 12, hybrid layout).
HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_parse_mounts_unescapes_octal() -> None:
    mounts = parse_mounts("/dev/sdb1 /mnt/my\\040disk ext4 rw,relatime 0 0\nshort line\n")
    assert len(mounts) == 1
    assert mounts[0].target == "/mnt/my disk"
    assert mounts[0].options == frozenset({"rw", "relatime"})


def test_parse_recorded_hybrid_mounts() -> None:
    kinds = [(m.target, m.fstype) for m in parse_mounts(HYBRID_MOUNTS)]
    assert ("/sys/fs/cgroup/unified", "cgroup2") in kinds
    assert sum(1 for _, fs in kinds if fs == "cgroup") == 3


def test_v2(make_tree: MakeTree) -> None:
    state = probe_cgroups(make_tree(cgroup="v2"))
    assert state.version == "v2"
    assert state.unified == "/sys/fs/cgroup"
    assert state.missing == []
    assert state.controllers["cpuacct"] == "v2 cpu.stat"
    assert state.controllers["devices"] == "v2 eBPF"
    assert state.controllers["freezer"] == "v2 cgroup.freeze"
    assert state.controllers["io"] == "v2"


def test_hybrid_like_this_machine(make_tree: MakeTree) -> None:
    state = probe_cgroups(make_tree(cgroup="hybrid"))
    assert state.version == "hybrid"
    assert state.unified == "/sys/fs/cgroup/unified"
    assert state.missing == []
    assert state.controllers["io"] == "v1 blkio"
    assert state.controllers["devices"] == "v1"
    version, controllers = cgroup_checks(state)
    assert version.status is Status.PASS and version.required
    assert "hybrid" in version.summary and "runc" in version.summary
    assert controllers.status is Status.PASS


def test_v1(make_tree: MakeTree) -> None:
    state = probe_cgroups(make_tree(cgroup="v1"))
    assert state.version == "v1"
    assert state.unified is None
    assert set(state.controllers) == set(WANTED)


def test_none_is_a_required_failure(make_tree: MakeTree) -> None:
    state = probe_cgroups(make_tree(cgroup="none"))
    assert state.version == "none"
    assert not state.usable
    version, controllers = cgroup_checks(state)
    assert version.status is Status.FAIL
    assert version.required
    assert version.remedy is not None and "mount -t cgroup2" in version.remedy
    assert controllers.status is Status.INFO


def test_missing_memory_controller_warns(make_tree: MakeTree) -> None:
    tree = make_tree(
        cgroup="v1", controllers=("cpuset", "cpu", "cpuacct", "blkio", "devices", "freezer", "pids")
    )
    state = probe_cgroups(tree)
    assert state.missing == ["memory"]
    controllers = cgroup_checks(state)[1]
    assert controllers.status is Status.WARN
    assert "limits on memory cannot be enforced" in controllers.summary
    assert controllers.remedy is not None and "cgroup_enable=memory" in controllers.remedy


def test_v2_without_io_warns_without_essential_wording(make_tree: MakeTree) -> None:
    state = probe_cgroups(make_tree(cgroup="v2", controllers=("cpuset", "cpu", "memory", "pids")))
    assert state.missing == ["io"]
    controllers = cgroup_checks(state)[1]
    assert controllers.status is Status.WARN
    assert "cannot be enforced" not in controllers.summary
    assert controllers.remedy is not None and "subtree_control" in controllers.remedy


def test_v1_disabled_controller_in_proc_cgroups_is_missing(make_tree: MakeTree) -> None:
    tree = make_tree(cgroup="v1")
    proc = tree / "proc/cgroups"
    proc.write_text(proc.read_text().replace("memory\t5\t1\t1", "memory\t5\t1\t0"))
    assert "memory" in probe_cgroups(tree).missing


def test_v1_falls_back_to_mount_options_without_proc_cgroups(make_tree: MakeTree) -> None:
    tree = make_tree(cgroup="v1")
    (tree / "proc/cgroups").unlink()
    state = probe_cgroups(tree)
    assert state.missing == []


def test_proc_mounts_used_when_self_mounts_missing(make_tree: MakeTree) -> None:
    tree: Path = make_tree(cgroup="v2")
    (tree / "proc/self/mounts").rename(tree / "proc/mounts")
    assert probe_cgroups(tree).version == "v2"
