"""The `virtkit run --rm` containers of a state root: never registered, known by their directories.

Each lives in ROOT/oneshots/NAME while its command runs, with `owner.json` saying which virtkit
process runs it (PID and start time, so a reused PID is not mistaken for it), its container id, its
image and limits. `virtkit list` shows the live ones; one whose virtkit process is gone (killed
with SIGKILL, a host crash) is stale and is cleaned up — container, mounts, files — by the next
`virtkit run`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from virtkit.drivers.base import ONESHOTS_DIR, InstancePaths
from virtkit.drivers.oci import rootfs
from virtkit.drivers.oci.plan import ContainerFiles
from virtkit.errors import VirtkitError
from virtkit.logs import get_logger

log = get_logger(__name__)

OWNER = "owner.json"


def _start_time(pid: int) -> str | None:
    """The start time of process `pid` (field 22 of /proc/PID/stat), None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def claim(paths: InstancePaths, facts: dict[str, Any]) -> None:
    """Say that this process runs the one-shot container in `paths` (`facts`: its id, image, limits)."""
    owner = {"pid": os.getpid(), "start": _start_time(os.getpid()), "created_at": time.time(), **facts}
    (paths.dir / OWNER).write_text(json.dumps(owner))


def _owner(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / OWNER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(owner: dict[str, Any] | None) -> bool:
    return owner is not None and _start_time(int(owner.get("pid", 0))) == owner.get("start")


def live(root: Path) -> list[dict[str, Any]]:
    """What `virtkit list` shows of the one-shot containers running now: name, id, image, limits."""
    found = []
    for directory in sorted((root / ONESHOTS_DIR).iterdir()) if (root / ONESHOTS_DIR).is_dir() else ():
        owner = _owner(directory)
        if owner is not None and _alive(owner):
            found.append({"name": directory.name, **owner})
    return found


def reap_stale(root: Path) -> None:
    """Clean up the one-shot containers whose virtkit process is gone (a directory just made, with
    no owner yet, is left alone for a minute). One that cannot be cleaned up is left, said in the
    log, for the next time: it never stops this run."""
    parent = root / ONESHOTS_DIR
    try:
        entries = sorted(parent.iterdir()) if parent.is_dir() else []
    except OSError:
        return
    for directory in entries:
        try:
            _reap(root, directory)
        except (OSError, VirtkitError) as error:
            log.warning("cannot clean up the stale `virtkit run` %s yet: %s", directory.name, error)


def _reap(root: Path, directory: Path) -> None:
    owner = _owner(directory)
    if _alive(owner) or (owner is None and time.time() - directory.stat().st_mtime < 60):
        return
    log.warning("cleaning up %s, a `virtkit run --rm` whose virtkit process is gone", directory.name)
    if owner is not None and owner.get("cid"):
        from virtkit.drivers.oci.runtime import OciRuntime

        runtime = OciRuntime.under(root, str(owner.get("runtime") or "runc"))
        runtime.delete(str(owner["cid"]))
        if runtime.state(str(owner["cid"])) is not None:  # still there: its ids stay taken
            raise VirtkitError(f"its container {owner['cid']} could not be deleted")
    rootfs.unmount(ContainerFiles(InstancePaths(directory)).merged)
    shutil.rmtree(directory, ignore_errors=True)
