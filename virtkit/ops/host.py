"""The host check: run every probe against this host and its state root.

The functional KVM probe (booting a real guest under KVM, see `virtkit.drivers.qemu.probe`) runs
by default; the host layer calls it only when /dev/kvm answers its ioctls. Its verdict is cached
for the rest of the boot, so only the first check of a boot pays for the guest boot (bounded by the
probe's timeout); `probe_kvm=False` skips it and the report says the test was not run.
"""

from __future__ import annotations

from pathlib import Path

from virtkit.host import DEFAULT_MIN_FREE, FunctionalProbe, FunctionalProbeResult, Report, run_checks


def _cached_kvm_probe() -> FunctionalProbeResult:
    from virtkit.drivers.qemu.probe import probe_cached
    from virtkit.ops.images import cache_dir

    return probe_cached(cache_dir())


def check_host(
    state_root: Path,
    *,
    min_free: int = DEFAULT_MIN_FREE,
    probe_kvm: bool = True,
    kvm_probe: FunctionalProbe | None = None,
) -> Report:
    """Probe this host; `state_root` is where free space is measured (it need not exist yet).

    `kvm_probe` replaces the default functional KVM probe (this boot's cached verdict, else a real
    guest boot); `probe_kvm=False` runs none."""
    probe = (kvm_probe or _cached_kvm_probe) if probe_kvm else None
    return run_checks(state_root=state_root, min_free=min_free, kvm_probe=probe)
