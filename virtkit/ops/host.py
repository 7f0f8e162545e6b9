"""The host check: run every probe against this host and its state root.

The functional KVM probe (booting a real guest under KVM, see `virtkit.drivers.qemu.probe`) runs
by default; the host layer calls it only when /dev/kvm answers its ioctls. Its verdict is cached
for the rest of the boot, so only the first check of a boot pays for the guest boot (bounded by the
probe's timeout); `probe_kvm=False` skips it and the report says the test was not run.

The OCI runtime probe (a test container with crun, then runc: `virtkit.drivers.oci.probe`) runs
too, its verdict cached in the state root when one exists (the check never creates it).
"""

from __future__ import annotations

from pathlib import Path

from virtkit.host import DEFAULT_MIN_FREE, FunctionalProbe, FunctionalProbeResult, Report, run_checks
from virtkit.host.ociruntime import IdmapProbe, OciProbe, OciRuntimeVerdict


def _cached_kvm_probe() -> FunctionalProbeResult:
    from virtkit.drivers.qemu.probe import probe_cached
    from virtkit.ops.images import cache_dir

    return probe_cached(cache_dir())


def _cached_oci_probe(state_root: Path) -> OciProbe:
    def probe() -> OciRuntimeVerdict:
        from virtkit.drivers.oci.probe import probe_cached

        return probe_cached(state_root)

    return probe


def check_host(
    state_root: Path,
    *,
    min_free: int = DEFAULT_MIN_FREE,
    probe_kvm: bool = True,
    kvm_probe: FunctionalProbe | None = None,
    probe_oci: bool = True,
) -> Report:
    """Probe this host; `state_root` is where free space is measured (it need not exist yet).

    `kvm_probe` replaces the default functional KVM probe (this boot's cached verdict, else a real
    guest boot); `probe_kvm=False` runs none. `probe_oci=False` runs no test container."""
    probe = (kvm_probe or _cached_kvm_probe) if probe_kvm else None
    oci_probe = _cached_oci_probe(state_root) if probe_oci else None
    idmap_probe = _idmap_probe(state_root) if probe_oci else None
    return run_checks(
        state_root=state_root, min_free=min_free, kvm_probe=probe, oci_probe=oci_probe,
        idmap_probe=idmap_probe,
    )  # fmt: skip


def _idmap_probe(state_root: Path) -> IdmapProbe:
    def probe() -> tuple[bool, str]:
        from virtkit.drivers.oci.idmap import check_host as idmap_check_host

        return idmap_check_host(state_root)

    return probe
