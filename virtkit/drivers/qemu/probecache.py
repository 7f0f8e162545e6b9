"""The per-boot store of the functional KVM probe's verdict: STATE_DIR/kvm-probe.json.

The verdict holds for one boot of one host kernel with one QEMU, so it is keyed by
/proc/sys/kernel/random/boot_id, the kernel release and ``qemu-system-* --version``; it lives on
tmpfs (/run/virtkit for root, $XDG_RUNTIME_DIR/virtkit otherwise) and goes away at reboot. It is
written atomically (temporary file, rename) in a 0700 directory; a stale, corrupt or foreign file
reads as "no verdict", so the caller probes again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from virtkit.host.cpuinfo import host_arch
from virtkit.host.kvm import FunctionalProbeResult
from virtkit.host.tools import qemu_for_arch

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/virtkit")
VERDICT_FILE = "kvm-probe.json"
PROC = Path("/proc")
VERSION_TIMEOUT = 5.0
_FORMAT = 1


def default_state_dir() -> Path:
    """/run/virtkit for root; $XDG_RUNTIME_DIR/virtkit for other users when set (both tmpfs)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "virtkit" if os.geteuid() != 0 and runtime else RUN_DIR


def qemu_version(qemu: str) -> str:
    """`qemu --version`'s first line with the binary's path: a QEMU upgrade invalidates the verdict."""
    binary = shutil.which(qemu)
    if binary is None:
        return f"{qemu}: absent"
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{binary}: unknown ({exc})"
    return f"{binary}: {(done.stdout.splitlines() or [''])[0]}"


def probe_key(*, proc: Path = PROC, qemu: str | None = None) -> dict[str, str] | None:
    """What a verdict holds for: this boot, this host kernel, this QEMU (None: /proc unreadable)."""
    try:
        boot_id = (proc / "sys/kernel/random/boot_id").read_text().strip()
        release = (proc / "sys/kernel/osrelease").read_text().strip()
    except OSError:
        return None
    return {"boot_id": boot_id, "kernel": release, "qemu": qemu_version(qemu or qemu_for_arch(host_arch()))}


def read_verdict(state_dir: Path, key: dict[str, str]) -> FunctionalProbeResult | None:
    """The stored result for `key`; None when absent, stale (another boot, kernel, QEMU) or corrupt."""
    path = state_dir / VERDICT_FILE
    try:
        if os.lstat(state_dir).st_uid != os.geteuid():
            return None
        document: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.info("ignoring the unreadable KVM verdict %s: %s", path, exc)
        return None
    if not isinstance(document, dict) or document.get("format") != _FORMAT or document.get("key") != key:
        return None
    result = document.get("result")
    if not isinstance(result, dict):
        return None
    ok, summary, elapsed, details = (result.get(k) for k in ("ok", "summary", "elapsed_s", "details"))
    valid_elapsed = elapsed is None or (isinstance(elapsed, int | float) and not isinstance(elapsed, bool))
    if not (isinstance(ok, bool) and isinstance(summary, str) and valid_elapsed
            and isinstance(details, dict)):
        log.info("ignoring the malformed KVM verdict %s", path)
        return None
    details = {**details, "cached": True, "probed_at": document.get("probed_at")}
    return FunctionalProbeResult(ok, summary, None if elapsed is None else float(elapsed), details)


def write_verdict(state_dir: Path, key: dict[str, str], result: FunctionalProbeResult) -> bool:
    """Store `result` for `key` atomically (temporary file, then rename) in a 0700 directory."""
    document = {
        "format": _FORMAT,
        "key": key,
        "probed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "result": {"ok": result.ok, "summary": result.summary, "elapsed_s": result.elapsed_s,
                   "details": result.details},
    }
    try:
        _private_dir(state_dir)
        fd, tmp = tempfile.mkstemp(prefix=".kvm-probe-", suffix=".tmp", dir=state_dir)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(document, out, indent=2)
                out.write("\n")
            os.replace(tmp, state_dir / VERDICT_FILE)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except (OSError, TypeError, ValueError) as exc:
        log.warning("cannot cache the KVM verdict in %s: %s", state_dir, exc)
        return False
    return True


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(f"{path} is not a directory owned by uid {os.geteuid()}")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
