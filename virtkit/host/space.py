"""Free space under the state root, where every disk, rootfs and snapshot of this host will live.

The root may not exist yet (first run): then its nearest existing parent is measured, since that is
the filesystem the root will be created on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from virtkit.host.checks import Check, JsonValue, Status
from virtkit.units import GiB, format_size

DEFAULT_STATE_ROOT = Path("/var/lib/virtkit")
DEFAULT_MIN_FREE = 10 * GiB


@dataclass(frozen=True)
class SpaceState:
    root: str
    measured: str | None  # the existing directory actually measured (root or a parent)
    free: int | None  # bytes, as `df` shows under Avail
    total: int | None
    error: str | None = None

    @property
    def root_exists(self) -> bool:
        return self.measured == self.root


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe_space(state_root: Path) -> SpaceState:
    root = state_root.absolute()
    measured = nearest_existing(root)
    try:
        st = os.statvfs(measured)
    except OSError as exc:
        return SpaceState(str(root), str(measured), None, None, exc.strerror or str(exc))
    # f_bavail like df's "Avail": the reserved blocks are not ours to plan with.
    return SpaceState(str(root), str(measured), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def space_check(state: SpaceState, min_free: int = DEFAULT_MIN_FREE) -> Check:
    details: dict[str, JsonValue] = {
        "state_root": state.root,
        "measured": state.measured,
        "root_exists": state.root_exists,
        "free_bytes": state.free,
        "total_bytes": state.total,
        "min_free_bytes": min_free,
    }
    where = state.root if state.root_exists else f"{state.measured} ({state.root} does not exist yet)"
    if state.free is None:
        return Check(
            "storage.free-space",
            Status.WARN,
            f"cannot measure free space under {where}: {state.error}",
            remedy="check that the state root (--root / VIRTKIT_ROOT) is on a mounted, readable filesystem",
            details=details,
        )
    free = format_size(state.free)
    if state.free < min_free:
        return Check(
            "storage.free-space",
            Status.WARN,
            f"only {free} free under {where}, below {format_size(min_free)}: images and disks may not fit",
            remedy="free space there, or choose a state root on a bigger filesystem (--root / VIRTKIT_ROOT)",
            details=details,
        )
    return Check("storage.free-space", Status.PASS, f"{free} free under {where}", details=details)
