"""The host check: run every probe against this host and its state root.

This is where the functional KVM probe (booting a real guest under KVM) plugs in once the VM driver
exists; until then the report says plainly that the functional test was not run.
"""

from __future__ import annotations

from pathlib import Path

from virtkit.host import DEFAULT_MIN_FREE, FunctionalProbe, Report, run_checks


def check_host(
    state_root: Path, *, min_free: int = DEFAULT_MIN_FREE, kvm_probe: FunctionalProbe | None = None
) -> Report:
    """Probe this host; `state_root` is where free space is measured (it need not exist yet)."""
    return run_checks(state_root=state_root, min_free=min_free, kvm_probe=kvm_probe)
