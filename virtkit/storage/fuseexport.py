"""A qcow2 disk seen as a raw file: a FUSE export by qemu-storage-daemon, for tools that read or
edit a filesystem image (debugfs, losetup, a boot sector reader) without mounting a guest's
filesystem on the host.

The daemon is killed at the end rather than asked to quit (a SIGTERM costs it over a second of
shutdown here); a writable export is flushed first, so the qcow2 file is complete by then. The end
waits until every thread of the daemon has gone (virtkit/procs.py): until then the image lock it
took on the qcow2 makes the next `qemu-img` on it fail ("Failed to get "write" lock").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from virtkit import procs
from virtkit.errors import ToolError

log = logging.getLogger(__name__)

TIMEOUT = 30.0

__all__ = ["exported", "qcow2_node"]


def qcow2_node(disk: Path, *, writable: bool, standalone: bool = False) -> dict[str, Any]:
    """The blockdev of the qcow2 file `disk`: over the backing chain its header names, or over none
    (`standalone`: a disk from outside, whose header is never followed to another file)."""
    node: dict[str, Any] = {"driver": "qcow2", "file": {"driver": "file", "filename": str(disk.absolute())}}
    if not writable:
        node["read-only"] = node["file"]["read-only"] = True
    if standalone:
        node["backing"] = None
    return node


@contextlib.contextmanager
def exported(
    node: dict[str, Any], *, writable: bool, what: str, pass_fds: Sequence[int] = ()
) -> Iterator[Path]:
    """The content of blockdev `node` as a raw file, for the time of the block. `what` names the
    disk in an error ("exporting WHAT failed: ...")."""
    with tempfile.TemporaryDirectory(prefix="virtkit-export-") as scratch:
        point, pidfile = Path(scratch) / "disk", Path(scratch) / "pid"
        point.touch(mode=0o600)
        argv = ["qemu-storage-daemon", "--blockdev", json.dumps({**node, "node-name": "vk0"}),
                "--export", f"type=fuse,id=e0,node-name=vk0,mountpoint={point},"
                f"writable={'on' if writable else 'off'}",
                "--pidfile", str(pidfile), "--daemonize"]  # fmt: skip
        try:
            subprocess.run(argv, pass_fds=tuple(pass_fds), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=TIMEOUT, check=True)  # fmt: skip
        except FileNotFoundError:
            hint = "apt-get install qemu-system-common"
            raise ToolError("qemu-storage-daemon is missing", hint=hint) from None
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            said = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            raise ToolError(f"exporting {what} failed: {said.strip()[-300:]}") from None
        pid = int(pidfile.read_text())
        try:
            yield point
            if writable:
                _flush(point)
        finally:
            _end(pid, point)


def _flush(point: Path) -> None:
    """fsync the export: QEMU flushes the qcow2 (its cached tables too) to the disk file."""
    fd = os.open(point, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _end(pid: int, point: Path) -> None:
    """Take the export away and kill the daemon, waiting (bounded) until all of it is gone."""
    from virtkit.drivers.oci import idmount  # umount2 (drivers.oci's imports are not needed before)

    with contextlib.suppress(OSError):
        idmount.unmount(point)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while not procs.ended(pid):
        if time.monotonic() > deadline:
            log.warning("qemu-storage-daemon %d is still there %.0f s after SIGKILL", pid, TIMEOUT)
            return
        time.sleep(0.002)
