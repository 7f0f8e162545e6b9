"""A container's counters from fake cgroup trees (v1 hybrid with its blkio hierarchy, v2 unified);
the real kernel files are read by tests/integration/test_api_metrics.py."""

from __future__ import annotations

from pathlib import Path

from virtkit.drivers.base import Stats
from virtkit.drivers.cgroup import Cgroup, Layout
from virtkit.drivers.oci.stats import blkio_root, cgroup_stats, parse_v1_bytes, parse_v2_bytes

LEAF = "virtkit/c1.1234abcd"
V1_IO = """\
8:16 Read 4096
8:16 Write 512
8:16 Sync 4608
8:16 Async 0
8:16 Discard 0
8:16 Total 4608
253:0 Read 1000
253:0 Write 24
253:0 Total 1024
Total 5632
"""
V2_IO = "8:16 rbytes=4096 wbytes=512 rios=2 wios=1 dbytes=0 dios=0\n253:0 rbytes=1000 wbytes=24 rios=1\n"
HYBRID_MOUNTS = """\
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/blkio cgroup rw,nosuid,blkio 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_v1_and_v2_io_files_are_summed_over_devices() -> None:
    assert parse_v1_bytes(V1_IO) == (5096, 536)
    assert parse_v2_bytes(V2_IO) == (5096, 536)
    assert parse_v1_bytes("Total 0\n") == (0, 0)
    assert parse_v2_bytes("") == (0, 0)


def test_the_blkio_hierarchy_is_found_in_the_mounts() -> None:
    assert blkio_root(HYBRID_MOUNTS) == Path("/sys/fs/cgroup/blkio")
    assert blkio_root("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n") is None


def test_v1_counters(tmp_path: Path) -> None:
    roots = {name: tmp_path / name for name in ("cpu", "cpuacct", "memory", "pids")}
    for hierarchy in roots.values():
        (hierarchy / LEAF).mkdir(parents=True)
    (roots["cpuacct"] / LEAF / "cpuacct.usage").write_text("1500000000\n")
    (roots["memory"] / LEAF / "memory.usage_in_bytes").write_text("8388608\n")
    blkio = tmp_path / "blkio"
    (blkio / LEAF).mkdir(parents=True)
    (blkio / LEAF / "blkio.throttle.io_service_bytes_recursive").write_text(V1_IO)
    cgroup = Cgroup(LEAF, Layout(v1=roots))
    assert cgroup_stats(cgroup, blkio) == Stats(1.5, 8 << 20, 5096, 536)
    # an older kernel without the _recursive file: the cgroup's own
    (blkio / LEAF / "blkio.throttle.io_service_bytes_recursive").unlink()
    (blkio / LEAF / "blkio.throttle.io_service_bytes").write_text("8:0 Read 7\n8:0 Write 3\n")
    assert cgroup_stats(cgroup, blkio) == Stats(1.5, 8 << 20, 7, 3)


def test_v2_counters(tmp_path: Path) -> None:
    (tmp_path / LEAF).mkdir(parents=True)
    (tmp_path / "cgroup.controllers").write_text("cpu memory io pids\n")
    (tmp_path / LEAF / "cpu.stat").write_text("usage_usec 250000\nuser_usec 200000\n")
    (tmp_path / LEAF / "memory.current").write_text("4096\n")
    (tmp_path / LEAF / "io.stat").write_text(V2_IO)
    assert cgroup_stats(Cgroup(LEAF, Layout(unified=tmp_path))) == Stats(0.25, 4096, 5096, 536)


def test_a_gone_cgroup_has_no_counters(tmp_path: Path) -> None:
    roots = {name: tmp_path / name for name in ("cpuacct", "memory")}
    assert cgroup_stats(Cgroup(LEAF, Layout(v1=roots)), tmp_path / "blkio") == Stats()
    assert cgroup_stats(Cgroup(LEAF, Layout(unified=tmp_path))) == Stats()


def test_a_container_runc_does_not_know_has_no_counters(tmp_path: Path) -> None:
    from virtkit.drivers.base import InstancePaths
    from virtkit.drivers.oci import OciDriver
    from virtkit.model import InstanceKind, InstanceRecord

    record = InstanceRecord(name="c1", kind=InstanceKind.CONTAINER)  # a fresh UUID: no cgroup of it
    assert OciDriver().stats(record, InstancePaths.of(tmp_path, "c1")) == Stats()
