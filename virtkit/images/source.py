"""Opening a file given for import: once, read-only, a regular file, and noticing if it changes.

Symbolic links are followed (administrators keep `latest.qcow2 -> ...` links), but what they lead
to must be a non-empty regular file outside the kernel's pseudo-filesystems (/proc, /sys, /dev):
directories, devices, FIFOs and sockets are refused before anything reads them.

The file is opened once and every tool reads that open file (`/dev/fd/N`), so swapping the path
for another file mid-import changes nothing; `check_unchanged` then compares the file's size,
mtime and ctime with those taken at opening, so writes to the file itself during the import are
caught (ctime cannot be set back by anyone).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from virtkit.errors import NotFoundError, RejectedError, SpecError

PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")

_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
)


def open_source(path: Path) -> tuple[int, os.stat_result]:
    """Open `path` read-only; return the descriptor and its stat. The caller closes it.

    Raises NotFoundError when the path (or a link's target) does not exist, SpecError when it
    cannot be opened, RejectedError when it is not a non-empty regular file.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise NotFoundError(
                f"{path} is a symbolic link to a missing file ({os.readlink(path)})"
            ) from None
        raise NotFoundError(f"no such file: {path}") from None
    except OSError as exc:
        raise SpecError(f"cannot open {path}: {exc.strerror}") from None
    _refuse_special(path, st)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise SpecError(f"cannot open {path}: {exc.strerror}") from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise RejectedError(f"{path} was replaced while being opened", hint="try again")
    if opened.st_size == 0:
        os.close(fd)
        raise RejectedError(f"{path.name} is empty (0 bytes)", hint="give an image file with content")
    return fd, opened


def _refuse_special(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "special file")
        link = f" (a symbolic link to {os.readlink(path)})" if os.path.islink(path) else ""
        raise RejectedError(
            f"{path} is a {kind}{link}, not a regular file",
            hint="give an image file; to import a block device, copy it to a file first "
            "(qemu-img convert -f raw /dev/... disk.qcow2)",
        )
    real = os.path.realpath(path)
    if any(real == top or real.startswith(top + "/") for top in PSEUDO_FILESYSTEMS):
        raise RejectedError(
            f"{path} is a kernel pseudo-file ({real}), not an image", hint="give an image file"
        )


def check_unchanged(fd: int, before: os.stat_result, name: str) -> None:
    """RejectedError if the open file changed (size, mtime or ctime) since `before` was taken."""
    now = os.fstat(fd)
    if (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
    ):
        raise RejectedError(
            f"{name} changed while it was being imported",
            hint="import a copy that nothing else writes to",
        )


def fd_path(fd: int) -> str:
    """The name a child process (given `fd` through pass_fds) opens to read that same file."""
    return f"/dev/fd/{fd}"
