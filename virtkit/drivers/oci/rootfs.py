"""A container's copy-on-write root filesystem: overlayfs with the image's unpacked tree as the
read-only lower layer (shared by every container of the image) and the container's own upper and
work directories. Deleting the container removes its upper layer only.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import HostCapabilityError, SpecError, ToolError

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Layers:
    lower: Path  # the image's rootfs (never written)
    upper: Path
    work: Path
    merged: Path


def _mountinfo() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def mounted(path: Path) -> bool:
    """Whether something is mounted at `path`."""
    target = str(path)
    for char, code in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        target = target.replace(char, code)
    escaped = target
    return any(line.split()[4] == escaped for line in _mountinfo() if len(line.split()) > 4)


def mount(layers: Layers) -> None:
    """Mount the overlay at `layers.merged` (nothing to do if it already is)."""
    for path in (layers.lower, layers.upper, layers.work, layers.merged):
        if any(char in str(path) for char in ",:\n"):
            raise SpecError(f"path {path} holds a character overlayfs options cannot carry (, : or newline)")
    if mounted(layers.merged):
        return
    for directory in (layers.upper, layers.work, layers.merged):
        directory.mkdir(mode=0o755, exist_ok=True)
    options = f"lowerdir={layers.lower},upperdir={layers.upper},workdir={layers.work}"
    argv = ["mount", "-t", "overlay", "overlay", "-o", options, str(layers.merged)]
    _run(argv, "mounting the root filesystem")


def unmount(merged: Path) -> None:
    """Unmount the overlay (nothing mounted is fine)."""
    if mounted(merged):
        _run(["umount", str(merged)], "unmounting the root filesystem")


def _run(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=MOUNT_TIMEOUT, check=False)
    except FileNotFoundError:
        raise HostCapabilityError(f"{argv[0]} is not installed", hint="apt-get install mount") from None
    if done.returncode != 0:
        raise ToolError(f"{what} failed: {done.stderr.strip()}", argv=argv, returncode=done.returncode)
