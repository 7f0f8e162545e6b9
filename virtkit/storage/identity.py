"""A clone's own identity on disk: no machine-id (the guest makes a new one at its first boot) and,
in a container, no SSH host keys (regenerated before sshd starts, as on the image's first boot).

Only the clone's own top is written: its root.qcow2 (through a FUSE export of its qcow2 chain by
qemu-storage-daemon, edited with debugfs: nothing of the guest is mounted on the host, and the
shared layers under it are opened read-only) or its upper/ directory (an empty machine-id and
whiteouts, as overlayfs would write them). A VM disk that is not a bare ext2/3/4 filesystem is
left as it is, and said: its guest keeps the machine-id (cloud-init images still get new SSH
host keys from the new instance-id).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from virtkit.drivers.oci.rootfs import Shift, shifted
from virtkit.images.tools import run_tool
from virtkit.storage import fuseexport
from virtkit.storage.vmlayers import opened, source

log = logging.getLogger(__name__)

MACHINE_ID = "etc/machine-id"
DBUS_ID = "var/lib/dbus/machine-id"
SSH_DIR = "etc/ssh"
TOOL_TIMEOUT = 120.0

__all__ = ["clear_disk", "clear_upper"]


# --- VM disks ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _exported(disk: Path, backing: Path | None) -> Iterator[Path]:
    """The VM disk's content as a raw file (a writable FUSE export of its qcow2 over `backing`):
    writes land in `disk` alone."""
    with opened(disk, write=True) as fd:
        node = json.loads(source(fd, backing).removeprefix("json:"))
        with fuseexport.exported(node, writable=True, what=f"{disk} to edit it", pass_fds=(fd,)) as raw:
            yield raw


def clear_disk(disk: Path, backing: Path | None) -> str:
    """Empty /etc/machine-id (and remove D-Bus's copy) in the VM disk's ext filesystem; a note for
    the user when it could not be done ("" when done or nothing was there)."""
    with _exported(disk, backing) as raw:
        probe = subprocess.run(["debugfs", "-R", f"stat /{MACHINE_ID}", str(raw)], capture_output=True,
                               text=True, errors="replace", timeout=TOOL_TIMEOUT, check=False)  # fmt: skip
        if "Bad magic number" in probe.stderr or "Couldn't find valid filesystem" in probe.stderr:
            return "its disk is not a bare ext4 filesystem: its machine-id was left as it is"
        size = re.search(r"^User:.*\bSize: ([0-9]+)", probe.stdout, re.MULTILINE)
        if (
            "File not found" in probe.stderr
            or "Type: regular" not in probe.stdout
            or not size
            or size[1] == "0"
        ):
            return ""
        if "needs_recovery" in _features(raw):  # the journal is replayed first, or it would undo the edit
            run_tool(["e2fsck", "-p", "-E", "journal_only", str(raw)], timeout=TOOL_TIMEOUT,
                     what="replaying the clone's journal", package="e2fsprogs")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="virtkit-id-") as scratch:
            empty, script = Path(scratch) / "empty", Path(scratch) / "commands"
            empty.touch(mode=0o444)
            script.write_text(
                f"rm /{MACHINE_ID}\nwrite {empty} /{MACHINE_ID}\nsif /{MACHINE_ID} mode 0100444\n"
                f"sif /{MACHINE_ID} uid 0\nsif /{MACHINE_ID} gid 0\n"
            )
            run_tool(["debugfs", "-w", "-f", str(script), str(raw)], timeout=TOOL_TIMEOUT,
                     what="clearing the clone's machine-id", package="e2fsprogs")  # fmt: skip
            dbus = subprocess.run(["debugfs", "-R", f"stat /{DBUS_ID}", str(raw)], capture_output=True,
                                  text=True, errors="replace", timeout=TOOL_TIMEOUT, check=False)  # fmt: skip
            if "Type: regular" in dbus.stdout:
                run_tool(["debugfs", "-w", "-R", f"rm /{DBUS_ID}", str(raw)], timeout=TOOL_TIMEOUT,
                         what="removing the clone's D-Bus machine-id", package="e2fsprogs")  # fmt: skip
    return ""


def _features(raw: Path) -> str:
    done = subprocess.run(["dumpe2fs", "-h", str(raw)], capture_output=True, text=True, errors="replace",
                          timeout=TOOL_TIMEOUT, check=False)  # fmt: skip
    return next((line for line in done.stdout.splitlines() if line.startswith("Filesystem features")), "")


# --- container upper directories ---------------------------------------------------------------


def _found(lowers: list[Path], relative: str) -> os.stat_result | None:
    """The entry at `relative` in the first lower layer that has one (a whiteout: None)."""
    for lower in lowers:
        try:
            info = os.lstat(lower / relative)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            return None
        return info
    return None


def _upper_dir(upper: Path, lowers: list[Path], relative: str, shift: Shift | None) -> Path:
    """Directory `relative` in `upper`, made (with its lower's mode and owner, in the container's
    ids) where missing, parents first."""
    path = upper
    for part in Path(relative).parts:
        path = path / part
        if path.is_dir() and not path.is_symlink():
            continue
        model = _found(lowers, str(path.relative_to(upper)))
        os.mkdir(path, 0o755)
        if model is not None and stat.S_ISDIR(model.st_mode):
            os.chmod(path, stat.S_IMODE(model.st_mode))
            uid, gid = model.st_uid, model.st_gid
        else:
            uid = gid = 0
        if shift is not None:
            uid, gid = shifted(uid, shift.uid, shift.size), shifted(gid, shift.gid, shift.size)
        os.lchown(path, uid, gid)
    return path


def clear_upper(upper: Path, lowers: list[Path], shift: Shift | None) -> None:
    """Give the container whose writable layer is `upper` (over `lowers`, nearest first) an empty
    machine-id and no SSH host keys, where its tree has them."""
    merged = [upper, *lowers]
    seen = _found(merged, MACHINE_ID)
    if seen is not None and stat.S_ISREG(seen.st_mode) and seen.st_size > 0:
        directory = _upper_dir(upper, lowers, str(Path(MACHINE_ID).parent), shift)
        target = directory / Path(MACHINE_ID).name
        if os.path.lexists(target):
            os.unlink(target)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
        try:
            owner = (shift.uid, shift.gid) if shift is not None else (0, 0)
            os.fchown(fd, *owner)
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)
    names: set[str] = set()
    for layer in merged:
        with contextlib.suppress(OSError):
            names.update(name for name in os.listdir(layer / SSH_DIR) if name.startswith("ssh_host_"))
    for name in sorted(names):
        relative = f"{SSH_DIR}/{name}"
        if _found(merged, relative) is None:
            continue
        target = _upper_dir(upper, lowers, SSH_DIR, shift) / name
        if os.path.lexists(target):
            os.unlink(target)
        if _found(lowers, relative) is not None:  # hidden from the image by a whiteout
            os.mknod(target, stat.S_IFCHR | 0o000, 0)
