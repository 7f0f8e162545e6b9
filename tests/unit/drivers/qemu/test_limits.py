"""A VM's share of the host, planned: CPU allowance forms, disk throttling, the memory ceiling, the
user QEMU runs as (and when it cannot be used), and which changes a running VM can take."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.permissions import reachable
from virtkit.drivers.qemu import limits
from virtkit.drivers.qemu.confinement import live_changes
from virtkit.drivers.qemu.runas import RunAs, unreachable
from virtkit.drivers.qemu.spec import DiskSpec, VmSpec
from virtkit.errors import SpecError, StateError
from virtkit.model import InstanceKind, InstanceRecord, MiB

NOBODY = RunAs("virtkit-qemu", 60123, 60123, (60123,))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, (None, 100_000)),
        ("", (None, 100_000)),
        ("50%", (50_000, 100_000)),
        ("150%", (150_000, 100_000)),
        ("2.5%", (2_500, 100_000)),
        ("25ms/100ms", (25_000, 100_000)),
        ("10ms/50ms", (10_000, 50_000)),
        (" 50% ", (50_000, 100_000)),
    ],
)
def test_cpu_allowance_forms(text: str | None, expected: tuple[int | None, int]) -> None:
    assert limits.cpu_allowance(text, host_cpus=2) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("lots", "invalid CPU allowance"),
        ("50", "invalid CPU allowance"),
        ("-5%", "invalid CPU allowance"),
        ("0%", "less than 1ms"),
        ("0.5%", "less than 1ms"),
        ("201%", "more than this host's 2 CPUs"),
        ("1ms/5000ms", "period must be between"),
        ("1ms/0.5ms", "period must be between"),
        ("50%%", "invalid CPU allowance"),
        ("\uff11\uff10%", "invalid CPU allowance"),  # fullwidth digits are not numbers here
    ],
)
def test_bad_cpu_allowances(text: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        limits.cpu_allowance(text, host_cpus=2)


def _record(**config: str) -> InstanceRecord:
    return InstanceRecord(name="vm1", kind=InstanceKind.VM, config=config)


def test_disk_throttle_and_memory_ceiling() -> None:
    assert limits.disk_throttle(_record()) == (None, None)
    assert limits.disk_throttle(_record(disk_iops="500", disk_bandwidth="10MiB")) == (500, 10 * MiB)
    for bad in ("0", "-1", "1e3", "many"):
        with pytest.raises(SpecError, match="disk IOPS"):
            limits.disk_throttle(_record(disk_iops=bad))
    with pytest.raises(SpecError, match="disk bandwidth"):
        limits.disk_throttle(_record(disk_bandwidth="fast"))
    assert limits.memory_ceiling(256 * MiB, "kvm") == 256 * MiB + limits.MEMORY_OVERHEAD
    tcg = limits.memory_ceiling(256 * MiB, "tcg")
    assert tcg == 256 * MiB + limits.MEMORY_OVERHEAD + limits.TCG_CODE_CACHE  # the translation cache


def test_run_as_root_only_when_the_user_is_missing_or_cannot_reach(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    (open_dir / "images").mkdir(parents=True)
    (open_dir / "images" / "disk.qcow2").write_bytes(b"")
    (open_dir / "images" / "disk.qcow2").chmod(0o644)
    reachable(open_dir)
    assert limits.run_as([open_dir / "images" / "disk.qcow2"], NOBODY) == ("virtkit-qemu", [])
    user, notices = limits.run_as([open_dir / "images" / "disk.qcow2"], None)
    assert user is None and "there is no virtkit-qemu user" in notices[0]
    (open_dir / "images" / "disk.qcow2").chmod(0o600)
    user, notices = limits.run_as([open_dir / "images" / "disk.qcow2"], NOBODY)
    assert user is None and "cannot read" in notices[0]
    (open_dir / "images").chmod(0o700)
    try:
        user, notices = limits.run_as([open_dir / "images" / "disk.qcow2"], NOBODY)
        assert user is None and f"cannot enter {open_dir / 'images'} (mode 0700)" in notices[0]
    finally:
        (open_dir / "images").chmod(0o755)


def test_directories_not_made_yet_do_not_block(tmp_path: Path) -> None:
    assert unreachable(tmp_path / "not" / "made" / "yet", RunAs("root", 0, 0, (0,))) is None


def _spec(**changes: object) -> VmSpec:
    values: dict[str, object] = dict(
        name="vm1", uuid="u", arch="x86_64", accel="tcg", machine="microvm", cpus=1, memory=256 * MiB,
        pidfile="p", qmp_socket="q", console_socket="c", console_log="l",
        disks=(DiskSpec("/d/root.qcow2"),), cgroup="virtkit/vm1.u",
    )  # fmt: skip
    values.update(changes)
    return VmSpec(**values)  # type: ignore[arg-type]


def test_what_a_running_vm_can_take() -> None:
    running = _spec()
    assert live_changes(running, _spec(), balloon=256 * MiB) == []
    assert live_changes(running, _spec(memory=128 * MiB), balloon=256 * MiB) == ["memory"]
    assert live_changes(running, _spec(), balloon=128 * MiB) == ["memory"]  # back up to its boot size
    assert live_changes(running, _spec(cpu_quota=50_000), balloon=256 * MiB) == ["cpu"]
    throttled = _spec(disks=(DiskSpec("/d/root.qcow2", iops=100),))
    assert live_changes(running, throttled, balloon=256 * MiB) == ["disks"]
    with pytest.raises(StateError, match="booted with 256MiB"):
        live_changes(running, _spec(memory=512 * MiB), balloon=256 * MiB)
    with pytest.raises(StateError, match="1 vCPU: that number changes only at its next start"):
        live_changes(running, _spec(cpus=2), balloon=256 * MiB)
    with pytest.raises(StateError, match="no memory balloon"):
        live_changes(_spec(devices="emulated"), _spec(devices="emulated", memory=128 * MiB), balloon=None)
