"""The files of volumes in a `dir` pool: qcow2 disks made and resized with qemu-img, directories.

A block volume is `POOL/block/NAME.qcow2`, a filesystem volume `POOL/filesystem/NAME/`. qemu-img
is always told the format (`-f qcow2`): nothing here ever probes one. A volume is made under a
temporary name (``.NAME.qcow2.vktmp.PID.TOKEN``, as store/files.py names them) and linked into
place only once qemu-img succeeded, so its final name never shows a half-made disk; deleting one
renames it to such a name first, so it vanishes at once and a failure can put it back. Temporary
names whose process is gone are swept by `clean_stale`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
from pathlib import Path

from virtkit.errors import ConflictError, ToolError
from virtkit.images.tools import run_tool
from virtkit.model import TiB, VolumeType
from virtkit.storage.archive import remove_tree
from virtkit.store.files import TEMP_MARKER, temp_name

log = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT = 120.0
SECTOR = 512
# A qcow2 with the default 64 KiB clusters holds at most ~2 PiB, but its L1 table grows with the
# virtual size (16 MiB at 1 PiB, allocated at once): beyond 64 TiB a size is a typo, not a disk.
MAX_VOLUME_SIZE = 64 * TiB
MIN_VOLUME_SIZE = 1024 * 1024
VOLUME_MODE = 0o600  # QEMU will be handed the disk when it is attached, never given the directory
_TEMP_RE = re.compile(r"\..*" + re.escape(TEMP_MARKER) + r"(?P<pid>[0-9]+)\.[0-9a-f]{8}", re.DOTALL)


def volume_path(pool_path: str, name: str, kind: VolumeType) -> Path:
    if kind is VolumeType.BLOCK:
        return Path(pool_path, "block", f"{name}.qcow2")
    return Path(pool_path, "filesystem", name)


def round_size(size: int) -> int:
    """`size` rounded up to whole sectors, as qemu-img would make it."""
    return -(-size // SECTOR) * SECTOR


def check_free_name(path: Path) -> None:
    """Refuse to make a volume where a file virtkit has no record of already is."""
    if os.path.lexists(path):
        raise ConflictError(
            f"{path} already exists, but virtkit has no volume for it",
            hint="move it away or remove it (a leftover of another tool, or of a crash), then retry",
        )


def create_block(path: Path, size: int) -> int:
    """Make a qcow2 disk of `size` bytes at `path`; its virtual size (whole sectors)."""
    check_free_name(path)
    tmp = path.with_name(temp_name(path.name))
    try:
        _qemu_img(
            ["create", "-q", "-f", "qcow2", str(tmp), str(round_size(size))], f"making volume {path.stem}"
        )
        os.chmod(tmp, VOLUME_MODE)
        made = virtual_size(tmp)
        os.link(tmp, path)  # unlike rename, never replaces what appeared meanwhile
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return made


def adopt_block(path: Path, disk: Path) -> int:
    """Move the qcow2 disk `disk` (an imported, checked one) to `path`, as `create_block` puts a new
    one there; its virtual size. A failure leaves nothing at `path`."""
    check_free_name(path)
    tmp = path.with_name(temp_name(path.name))
    try:
        try:
            os.rename(disk, tmp)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copyfile(disk, tmp)  # a qcow2 holds no holes worth keeping
        os.chmod(tmp, VOLUME_MODE)
        made = virtual_size(tmp)
        os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return made


def create_filesystem(path: Path) -> None:
    """Make an empty directory volume at `path` (owned by root; its owner inside a container is
    mapped when it is attached)."""
    check_free_name(path)
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)


def resize_block(path: Path, size: int, *, shrink: bool) -> int:
    """Set the virtual size of the qcow2 disk at `path`; its new virtual size."""
    args = (
        ["resize", "-q", "-f", "qcow2"]
        + (["--shrink"] if shrink else [])
        + [str(path), str(round_size(size))]
    )
    _qemu_img(args, f"resizing volume {path.stem}")
    return virtual_size(path)


def virtual_size(path: Path) -> int:
    done = _qemu_img(["info", "--output=json", "-f", "qcow2", str(path)], f"reading volume {path.stem}")
    try:
        info = json.loads(done)
        return int(info["virtual-size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ToolError(f"qemu-img info gave no virtual size for {path}", stderr=done[-2000:]) from exc


def usage(path: Path) -> int | None:
    """Bytes the volume takes on disk (allocated blocks, each inode once), None when it is missing.

    A directory is walked without following symlinks, and without leaving its filesystem."""
    try:
        top = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(top.st_mode):
        return top.st_blocks * 512
    seen: set[int] = set()
    total = top.st_blocks * 512
    pending = [str(path)]
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                if info.st_dev != top.st_dev or (info.st_nlink > 1 and info.st_ino in seen):
                    continue
                seen.add(info.st_ino)
                total += info.st_blocks * 512
                if stat.S_ISDIR(info.st_mode):
                    pending.append(entry.path)
    return total


def retire(path: Path) -> Path | None:
    """Rename a volume out of sight before it is forgotten; its new name (None: it was gone)."""
    hidden = path.with_name(temp_name(path.name))
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return None
    return hidden


def restore(hidden: Path | None, path: Path) -> None:
    """Undo `retire`."""
    if hidden is not None:
        os.rename(hidden, path)


def purge(hidden: Path | None) -> None:
    if hidden is not None:
        remove_tree(hidden)


def clean_stale(directory: Path) -> list[Path]:
    """Remove what killed creates and deletes left in a pool's type directory; what was removed."""
    removed: list[Path] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = _TEMP_RE.fullmatch(name)
        if match and not _alive(int(match["pid"])):
            remove_tree(directory / name)
            log.info("removed %s, left by an interrupted volume operation", directory / name)
            removed.append(directory / name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def _qemu_img(args: list[str], what: str) -> str:
    log.debug("qemu-img %s", " ".join(args))
    done = run_tool(["qemu-img", *args], timeout=QEMU_IMG_TIMEOUT, what=what, package="qemu-utils")
    return done.stdout
