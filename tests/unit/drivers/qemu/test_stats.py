"""A VM's counters: QMP query-blockstats answers summed, QEMU's own /proc counters when it has no
cgroup, and what a VM whose monitor does not answer still reports. Real QEMU: see
tests/integration/test_api_metrics.py."""

from __future__ import annotations

import os
from pathlib import Path

from virtkit.drivers.base import Stats
from virtkit.drivers.qemu.stats import block_bytes, process_usage, vm_stats

# QEMU 7.2's answer for a VM with a root disk and a read-only seed (abridged)
BLOCKSTATS = [
    {"device": "", "qdev": "/machine/peripheral/disk0/virtio-backend", "node-name": "disk0",
     "stats": {"rd_bytes": 1052672, "wr_bytes": 8192, "rd_operations": 40, "flush_operations": 2},
     "parent": {"node-name": "disk0-file", "stats": {"rd_bytes": 999, "wr_bytes": 999}}},
    {"device": "", "qdev": "/machine/peripheral/seed/virtio-backend", "node-name": "seed",
     "stats": {"rd_bytes": 4096, "wr_bytes": 0}},
]  # fmt: skip


def test_blockstats_are_summed_over_the_guest_devices() -> None:
    # the parent (file) node's own counters are not the guest's: not added
    assert block_bytes(BLOCKSTATS) == (1056768, 8192)
    assert block_bytes([]) == (None, None)
    assert block_bytes(None) == (None, None)
    assert block_bytes([{"stats": {"rd_bytes": "x"}}]) == (None, None)


def test_process_usage_of_a_live_process() -> None:
    cpu, memory = process_usage(os.getpid())
    assert cpu is not None and cpu > 0
    assert memory is not None and memory > 1 << 20


def test_process_usage_reads_past_a_command_with_parentheses(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    fields = ["S", "1", "42", "42", "0", "-1", "4194560", "10", "0", "0", "0", "250", "50"]
    (tmp_path / "42" / "stat").write_text(f"42 (qemu (x) y) {' '.join(fields)} 0 0 20 0 4 0\n")
    (tmp_path / "42" / "statm").write_text("1000 300 100 1 0 200 0\n")
    cpu, memory = process_usage(42, tmp_path)
    assert cpu == 300 / os.sysconf("SC_CLK_TCK")
    assert memory == 300 * os.sysconf("SC_PAGE_SIZE")
    assert process_usage(43, tmp_path) == (None, None)


def test_no_monitor_no_disk_counters(tmp_path: Path) -> None:
    stats = vm_stats("vm1", os.getpid(), None, tmp_path / "monitor.sock")
    assert stats.cpu_seconds is not None and stats.memory_bytes is not None
    assert (stats.disk_read_bytes, stats.disk_write_bytes) == (None, None)
    assert stats != Stats()


def test_a_vm_that_does_not_run_has_no_counters(tmp_path: Path) -> None:
    from virtkit.drivers.base import InstancePaths
    from virtkit.drivers.qemu import QemuDriver
    from virtkit.model import InstanceKind, InstanceRecord

    record = InstanceRecord(name="vm1", kind=InstanceKind.VM)
    paths = InstancePaths.of(tmp_path, "vm1")
    paths.dir.mkdir(parents=True)
    assert QemuDriver().stats(record, paths) == Stats()
    paths.pidfile.write_text(f"{os.getpid()}\n")  # a live process, but not this VM's QEMU
    assert QemuDriver().stats(record, paths) == Stats()
