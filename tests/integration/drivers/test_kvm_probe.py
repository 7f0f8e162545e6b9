"""The functional KVM probe for real: QEMU, the cached Debian kernel and busybox-static.

Under TCG the probe guest must reach init (so a KVM failure is KVM's, not the guest's). Under KVM
the outcome is this host's: on a kvm_pvm host (nested, this machine) guests hang, so the probe must
fail within its timeout; elsewhere it may pass. Either way it is bounded and leaves no QEMU behind.
First run only: the Debian kernel package is downloaded into the default cache.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from virtkit.drivers.qemu.probe import NO_KVM, kvm_works, probe_cached, probe_kvm
from virtkit.host.kvm import FunctionalProbeResult
from virtkit.ops.images import cache_dir

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
    pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="needs busybox-static"),
]

CACHE = cache_dir()
KVM_TIMEOUT = 4.0
PVM = Path("/sys/module/kvm_pvm").is_dir()


def _kvm_openable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    return True


needs_kvm = pytest.mark.skipif(not _kvm_openable(), reason="/dev/kvm cannot be opened here")


def _assert_nothing_left(result: FunctionalProbeResult) -> None:
    assert result.details["reaped"] is True
    pid = int(str(result.details["pid"]))
    cmdline = Path(f"/proc/{pid}/cmdline")
    # Reaped: the pid is gone, or already reused by an unrelated process.
    assert not cmdline.exists() or b"virtkit-kvm-probe-" not in cmdline.read_bytes()
    argv = result.details["argv"]
    assert isinstance(argv, list)
    initrd = Path(str(argv[argv.index("-initrd") + 1]))
    assert not initrd.parent.exists(), "the probe's temporary directory was left behind"


def test_probe_guest_reaches_init_under_tcg() -> None:
    started = time.monotonic()
    result = probe_kvm(cache=CACHE, accel="tcg", timeout=30.0)
    wall = time.monotonic() - started
    assert result.ok, f"{result.summary}\n{result.details.get('console_tail')}"
    assert result.summary.startswith("a test guest reached init under TCG in ")
    assert result.elapsed_s is not None and result.elapsed_s <= wall < 30.0
    _assert_nothing_left(result)


@needs_kvm
def test_probe_under_kvm_is_bounded_and_honest() -> None:
    started = time.monotonic()
    result = probe_kvm(cache=CACHE, timeout=KVM_TIMEOUT)
    wall = time.monotonic() - started
    assert result.details["ran"] is True, result.summary
    assert wall < KVM_TIMEOUT + 2.0, f"the probe took {wall:.1f}s"
    _assert_nothing_left(result)
    if PVM:  # kvm_pvm runs only PVM-enabled guest kernels: Debian's hangs
        assert not result.ok
    if result.ok:
        assert result.summary.startswith("a test guest reached init under KVM in ")
    else:
        assert result.summary.startswith(f"{NO_KVM}: ")


@needs_kvm
def test_verdict_is_cached_for_the_boot(tmp_path: Path) -> None:
    state = tmp_path / "run"
    assert kvm_works(state_dir=state) is None
    started = time.monotonic()
    first = probe_cached(CACHE, timeout=KVM_TIMEOUT, state_dir=state)
    assert time.monotonic() - started < KVM_TIMEOUT + 2.0
    started = time.monotonic()
    again = probe_cached(CACHE, timeout=KVM_TIMEOUT, state_dir=state)
    assert time.monotonic() - started < 0.5, "a cached verdict must not boot anything"
    assert again.details["cached"] is True
    assert (again.ok, again.summary) == (first.ok, first.summary)
    assert kvm_works(state_dir=state) is first.ok
