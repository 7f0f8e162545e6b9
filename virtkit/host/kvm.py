"""Probe KVM: the /dev/kvm device, its ioctls, the kernel modules behind it, and the functional hook.

Three levels of evidence, weakest first:

1. /dev/kvm exists and opens read-write;
2. ``KVM_GET_API_VERSION`` answers 12 and ``KVM_CREATE_VM`` returns a VM fd (`probe_kvm_ioctl`);
3. a real guest boots under KVM (a `FunctionalProbe`, supplied by the VM driver).

Only level 3 proves acceleration: on nested hosts /dev/kvm can pass 1 and 2 while guests hang.
The ioctls cannot run on a fake tree, so `run_checks` takes the prober as a parameter.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.host.checks import JsonValue

log = logging.getLogger(__name__)

KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_CREATE_VM = 0xAE01  # _IO(KVMIO, 0x01), argument = machine type (0: default)
KVM_API_VERSION = 12  # frozen since Linux 2.6.22; anything else is not the KVM we know

# Modules that make /dev/kvm work, as seen in /sys/module. kvm_pvm is PVM, a software hypervisor
# that gives nested hosts KVM without VT-x/AMD-V; it runs only PVM-enabled guest kernels.
VENDOR_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")


@dataclass(frozen=True)
class KvmIoctlResult:
    """How far the ioctl probe got: `failed_stage` is "open", "api", "create" or None (all passed)."""

    failed_stage: str | None = None
    api_version: int | None = None
    errno: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed_stage is None

    @property
    def opened(self) -> bool:
        return self.failed_stage != "open"


KvmIoctlProber = Callable[[Path], KvmIoctlResult]


def probe_kvm_ioctl(path: Path = Path("/dev/kvm")) -> KvmIoctlResult:
    """Open `path`, ask the API version, create and destroy an empty VM. Never raises."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmIoctlResult("open", errno=exc.errno, error=exc.strerror or str(exc))
    try:
        try:
            version = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        except OSError as exc:
            return KvmIoctlResult("api", errno=exc.errno, error=exc.strerror or str(exc))
        if version != KVM_API_VERSION:
            return KvmIoctlResult("api", api_version=version, error=f"API version {version}, expected 12")
        try:
            vm_fd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        except OSError as exc:
            return KvmIoctlResult("create", api_version=version, errno=exc.errno, error=exc.strerror)
        os.close(vm_fd)
        return KvmIoctlResult(api_version=version)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FunctionalProbeResult:
    """Outcome of booting a real guest under KVM (the hook a later VM-driver probe fills)."""

    ok: bool
    summary: str
    elapsed_s: float | None = None
    details: dict[str, JsonValue] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        """False when the probe could not boot anything (no kernel, no QEMU): no verdict at all."""
        return self.details.get("ran") is not False


FunctionalProbe = Callable[[], FunctionalProbeResult]


def run_functional_probe(probe: FunctionalProbe) -> FunctionalProbeResult:
    """Run `probe`; a probe that crashes is a failed probe, never a crashed host check."""
    try:
        return probe()
    except Exception as exc:  # the hook is third-party code as far as host check is concerned
        log.warning("functional KVM probe crashed", exc_info=True)
        return FunctionalProbeResult(False, f"the probe itself failed: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class KvmState:
    """Everything known about KVM on this host."""

    device: str
    exists: bool
    char_device: bool = False
    mode: str | None = None
    owner: str | None = None  # "uid:gid" of /dev/kvm, for the permission remedy
    ioctl: KvmIoctlResult | None = None
    modules: tuple[str, ...] = ()
    nested: dict[str, str] = field(default_factory=dict)
    functional: FunctionalProbeResult | None = None

    @property
    def usable(self) -> bool:
        """KVM answers its ioctls (level 2): acceleration is possible, not yet proven."""
        return self.exists and self.ioctl is not None and self.ioctl.ok

    @property
    def vendor_module(self) -> str | None:
        return next((m for m in VENDOR_MODULES if m in self.modules), None)


def probe_modules(sysroot: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    """Loaded KVM modules and their ``nested`` parameter, from /sys/module."""
    base = sysroot / "sys/module"
    modules = tuple(m for m in ("kvm", *VENDOR_MODULES) if (base / m).is_dir())
    nested: dict[str, str] = {}
    for module in ("kvm_intel", "kvm_amd"):
        try:
            nested[module] = (base / module / "parameters/nested").read_text().strip()
        except OSError:
            continue
    return modules, nested


def probe_kvm(
    sysroot: Path,
    ioctl: KvmIoctlProber = probe_kvm_ioctl,
    functional: FunctionalProbe | None = None,
) -> KvmState:
    """Probe /dev/kvm under `sysroot`; the functional probe runs only when the ioctls pass."""
    device = sysroot / "dev/kvm"
    modules, nested = probe_modules(sysroot)
    try:
        st = device.stat()
    except OSError:
        return KvmState(str(device), exists=False, modules=modules, nested=nested)
    result = ioctl(device)
    log.debug("KVM ioctl probe on %s: %s", device, result)
    run = run_functional_probe(functional) if functional is not None and result.ok else None
    return KvmState(
        str(device),
        exists=True,
        char_device=stat.S_ISCHR(st.st_mode),
        mode=f"{stat.S_IMODE(st.st_mode):04o}",
        owner=f"{st.st_uid}:{st.st_gid}",
        ioctl=result,
        modules=modules,
        nested=nested,
        functional=run,
    )


def is_permission_error(result: KvmIoctlResult) -> bool:
    return result.errno in (errno.EACCES, errno.EPERM)
