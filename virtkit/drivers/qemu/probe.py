"""The functional KVM probe: boot a throwaway guest under KVM and see it reach init; one verdict per boot.

/dev/kvm answering its ioctls does not prove guests run (on nested hosts and kvm_pvm they hang), so
`probe_kvm` boots the cheapest honest guest: the Debian kernel already in the download cache with
an initramfs made on the fly holding only a static busybox and an /init that prints `MARKER` on the
console. The guest passes when the marker shows within the timeout; QEMU is killed and reaped
either way. The same machinery under ``accel="tcg"`` proves the probe guest itself boots.

`probe_cached` stores the verdict once per boot (see `probecache`: keyed by the boot id, the kernel
release and the QEMU version), so `host check` and `--accel auto` pay for the boot once per boot;
`kvm_works` is the yes/no/unknown answer the VM driver asks. A probe that could not run (no QEMU,
no guest kernel) is never cached: its result has ``details["ran"] = False`` and reads as unknown.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from virtkit.drivers.qemu.probecache import PROC, default_state_dir, probe_key, read_verdict, write_verdict
from virtkit.errors import VirtkitError
from virtkit.host.checks import JsonValue
from virtkit.host.cpuinfo import host_arch
from virtkit.host.kvm import FunctionalProbeResult
from virtkit.host.tools import qemu_for_arch
from virtkit.images.debcache import cached_versions, debian_arch
from virtkit.images.initramfs import CpioWriter
from virtkit.images.kernel import fetch_kernel
from virtkit.images.tinyroot import find_busybox

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 8.0
KVM_DEVICE = Path("/dev/kvm")
MARKER = b"VIRTKIT-KVM-PROBE-INIT"
NO_KVM = "KVM device present but cannot run guests"
REAP_TIMEOUT = 10.0
_TAIL = 600  # characters of console / stderr kept in the details

# The guest: mount devtmpfs to get /dev/console, print the marker, power off (QEMU is killed anyway).
_INIT = (
    "#!/bin/busybox sh\n"
    "/bin/busybox mount -t devtmpfs dev /dev\n"
    f"echo {MARKER.decode()} > /dev/console\n"
    "/bin/busybox poweroff -f\n"
)
# arch -> (machine, console). microvm boots the PVH kernel ELF directly, the fastest path.
_MACHINES = {"x86_64": ("microvm", "ttyS0"), "aarch64": ("virt,gic-version=max", "ttyAMA0")}

Probe = Callable[[], FunctionalProbeResult]


def not_run(why: str, **details: JsonValue) -> FunctionalProbeResult:
    """A probe that booted nothing: not a verdict, never cached."""
    return FunctionalProbeResult(False, f"not run: {why}", None, {"ran": False, **details})


def ran(result: FunctionalProbeResult) -> bool:
    return result.details.get("ran") is not False


def guest_kernel(cache: Path, arch: str) -> Path | None:
    """A bootable Debian kernel for `arch`: any already in the cache (no network), else fetched once."""
    debarch = debian_arch(arch)
    for root in cached_versions(cache, f"linux-image-*-{debarch}", debarch):
        images = sorted((root / "boot").glob("vmlinux-*")) + sorted((root / "boot").glob("vmlinuz-*"))
        if images:
            return images[0]
    try:
        kernel = fetch_kernel(cache, arch)
    except (VirtkitError, OSError) as exc:
        log.warning("no guest kernel for the KVM probe: %s", exc)
        return None
    return kernel.vmlinux or kernel.vmlinuz


def write_initramfs(out: Path, busybox: Path) -> None:
    """An uncompressed initramfs: /bin/busybox and the marker-printing /init (the kernel makes the rest)."""
    buffer = io.BytesIO()
    writer = CpioWriter(buffer)
    for directory in ("bin", "dev", "proc"):
        writer.directory(directory)
    writer.file("bin/busybox", busybox.read_bytes(), 0o755)
    writer.file("init", _INIT.encode(), 0o755)
    writer.finish()
    out.write_bytes(buffer.getvalue())


def probe_argv(qemu: str, arch: str, accel: str, kernel: Path, initrd: Path) -> list[str]:
    machine, console = _MACHINES[arch]
    append = f"console={console} panic=-1 quiet"
    if accel == "tcg" and arch == "x86_64":
        # microvm has no HPET or PM timer: under TCG on a busy host TSC calibration can hang without it.
        khz = _host_tsc_khz()
        append += f" tsc_early_khz={khz}" if khz else ""
    return [
        qemu, "-accel", accel, "-M", machine, "-cpu", "host" if accel == "kvm" else "max",
        "-m", "128", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
    ]  # fmt: skip


def _host_tsc_khz() -> int | None:
    try:
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def probe_kvm(
    *,
    cache: Path,
    timeout: float = DEFAULT_TIMEOUT,
    accel: str = "kvm",
    arch: str | None = None,
    qemu: str | None = None,
    device: Path = KVM_DEVICE,
) -> FunctionalProbeResult:
    """Boot the probe guest under `accel` and report whether it reached init within `timeout` s."""
    arch = host_arch(arch)
    if arch not in _MACHINES:
        return not_run(f"no probe guest for {arch}")
    problem = kvm_openable(device) if accel == "kvm" else None
    if problem is not None:
        return not_run(problem)
    binary = shutil.which(qemu or qemu_for_arch(arch))
    if binary is None:
        return not_run(f"{qemu or qemu_for_arch(arch)} not found")
    kernel = guest_kernel(cache, arch)
    if kernel is None:
        return not_run("no guest kernel available (none cached and the download failed)")
    try:
        busybox = find_busybox(cache, arch).path
    except (VirtkitError, OSError) as exc:
        return not_run(f"no static busybox for the probe guest: {exc}")
    with tempfile.TemporaryDirectory(prefix="virtkit-kvm-probe-") as tmp:
        initrd = Path(tmp) / "initrd"
        write_initramfs(initrd, busybox)
        argv = probe_argv(binary, arch, accel, kernel, initrd)
        return _boot(argv, Path(tmp) / "stderr", accel, timeout)


def _boot(argv: list[str], stderr_path: Path, accel: str, timeout: float) -> FunctionalProbeResult:
    """Run QEMU until the marker, its exit or the timeout; it is always killed and reaped."""
    label = accel.upper()
    details: dict[str, JsonValue] = {"ran": True, "accel": accel, "argv": list(argv), "timeout_s": timeout}
    started = time.monotonic()
    try:
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    except OSError as exc:
        return not_run(f"cannot start {argv[0]}: {exc.strerror or exc}")
    details["pid"] = process.pid
    try:
        console, outcome = _watch(process, started + timeout)
        elapsed = round(time.monotonic() - started, 3)
    finally:
        details["reaped"] = _reap(process)
    details["outcome"] = outcome
    details["console_tail"] = console[-_TAIL:].decode(errors="replace")
    stderr_tail = stderr_path.read_bytes()[-_TAIL:].decode(errors="replace").strip()
    details["qemu_stderr"] = stderr_tail
    if outcome == "init":
        summary = f"a test guest reached init under {label} in {elapsed:.1f}s"
        return FunctionalProbeResult(True, summary, elapsed, details)
    prefix = f"{NO_KVM}: " if accel == "kvm" else ""
    if outcome == "exited":
        why = f"QEMU exited (status {process.returncode}) before the test guest reached init"
        why += f": {stderr_tail}" if stderr_tail else ""
    else:
        why = f"a test guest did not reach init within {timeout:g}s under {label}"
    return FunctionalProbeResult(False, prefix + why, elapsed, details)


def _watch(process: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, str]:
    """Read the serial console until the marker ("init"), EOF ("exited") or `deadline` ("timeout")."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    console = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                break
            chunk = os.read(fd, 65536)
            if not chunk:  # QEMU closed its stdout: it is exiting
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.0, deadline - time.monotonic()))
                return console, "exited"
            console = (console + chunk)[-65536:]
            if MARKER in console:
                return console, "init"
    return console, "timeout"


def _reap(process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is None:
        process.kill()
    try:
        process.wait(REAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.error("QEMU (pid %d) of the KVM probe survived SIGKILL for %gs", process.pid, REAP_TIMEOUT)
        return False
    finally:
        if process.stdout is not None:
            process.stdout.close()
    return True


def kvm_openable(device: Path = KVM_DEVICE) -> str | None:
    """None when `device` opens read-write, else why not."""
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"cannot open {device}: {exc.strerror or exc}"
    return None


def probe_cached(
    cache: Path,
    *,
    refresh: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    state_dir: Path | None = None,
    proc: Path = PROC,
    qemu: str | None = None,
    device: Path = KVM_DEVICE,
    probe: Probe | None = None,
) -> FunctionalProbeResult:
    """This boot's verdict if stored (unless `refresh`), else probe (`probe`, default `probe_kvm`)
    and store it. Nothing boots when `device` cannot be opened."""
    problem = kvm_openable(device)
    if problem is not None:
        return not_run(problem)
    state_dir = state_dir or default_state_dir()
    key = probe_key(proc=proc, qemu=qemu)
    if key is not None and not refresh:
        cached = read_verdict(state_dir, key)
        if cached is not None:
            return cached
    run = probe or (lambda: probe_kvm(cache=cache, timeout=timeout, qemu=qemu, device=device))
    result = run()
    log.info("functional KVM probe: %s", result.summary)
    if key is not None and ran(result):
        write_verdict(state_dir, key, result)
    return result


def kvm_works(
    *,
    cache: Path | None = None,
    state_dir: Path | None = None,
    proc: Path = PROC,
    qemu: str | None = None,
    device: Path = KVM_DEVICE,
) -> bool | None:
    """Whether guests run under KVM here: this boot's stored verdict; False when `device` cannot
    be opened; None when unknown (no probe ran this boot, or it could not run). With `cache` (the
    download cache), a missing verdict is probed for first (bounded: ~DEFAULT_TIMEOUT s)."""
    if kvm_openable(device) is not None:
        return False
    state_dir = state_dir or default_state_dir()
    if cache is not None:
        result: FunctionalProbeResult | None = probe_cached(
            cache, state_dir=state_dir, proc=proc, qemu=qemu, device=device
        )
    else:
        key = probe_key(proc=proc, qemu=qemu)
        result = read_verdict(state_dir, key) if key is not None else None
    return None if result is None or not ran(result) else result.ok
