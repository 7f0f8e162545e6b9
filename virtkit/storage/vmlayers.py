"""A VM's disk chain under linked clones: freezing its root.qcow2 into a layer, new overlays on a
layer, standalone copies, and the qcow2 headers checked on the way (design: docs/clones.md).

The chain of a VM is its root.qcow2 (QEMU's user's, writable), then its layers (root's, 0444,
read-only, shared), then its image's disk. root.qcow2 lies in a directory QEMU's user may write,
so it is opened here without following a symlink and handed to qemu-img as /proc/self/fd/N, and
what its header names is never followed: the backing file virtkit expects is named explicitly
(a `json:` filename), and a header naming another file, or an external data file, is refused.
Layers and image disks are root's and were checked when they were made, so their own headers
are followed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from virtkit.errors import StateError, ToolError
from virtkit.images.tools import missing_tool, tail

log = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT = 3600.0  # a full copy of a big disk
LAYER_MODE = 0o444

__all__ = ["check_header", "convert", "freeze", "header", "make_overlay", "opened", "thaw"]


@contextlib.contextmanager
def opened(path: Path, *, write: bool = False) -> Iterator[int]:
    """The disk file at `path`, opened without following a symlink and checked to be a regular file."""
    try:
        fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"cannot open the disk {path}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateError(f"the disk {path} is not a regular file")
        yield fd
    finally:
        os.close(fd)


def run(
    argv: Sequence[str], what: str, *, fds: Sequence[int] = (), names: dict[str, Path] | None = None
) -> str:
    """Run qemu-img; its stdout. ToolError with its last words (descriptors named as the files)."""
    log.debug("%s", " ".join(argv))
    try:
        done = subprocess.run(
            list(argv), pass_fds=tuple(fds), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            errors="replace", timeout=QEMU_IMG_TIMEOUT, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise missing_tool(argv[0], "qemu-utils") from None
    except subprocess.TimeoutExpired:
        raise ToolError(
            f"{what}: {argv[0]} did not finish within {QEMU_IMG_TIMEOUT:g} s", argv=list(argv)
        ) from None
    if done.returncode != 0:
        err = tail(done.stderr or done.stdout)
        for fd_name, path in (names or {}).items():
            err = err.replace(fd_name, str(path))
        reason = err.splitlines()[-1] if err else "no message"
        hint = "is its QEMU still running? see `virtkit list`" if "lock" in err else None
        raise ToolError(f"{what}: qemu-img failed (exit {done.returncode}): {reason}", argv=list(argv),
                        returncode=done.returncode, stderr=err, hint=hint)  # fmt: skip
    return done.stdout


def header(fd: int, path: Path) -> dict[str, Any]:
    """What the qcow2 header of the open disk says (`qemu-img info`, backing file not opened; -U:
    a running QEMU may hold it)."""
    argv = ["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", f"/proc/self/fd/{fd}"]
    out = run(argv, f"reading the header of {path}", fds=[fd], names={f"/proc/self/fd/{fd}": path})
    try:
        info = json.loads(out)
    except ValueError as exc:
        raise ToolError(f"qemu-img info gave no JSON for {path}", stderr=out[-2000:]) from exc
    if not isinstance(info, dict):
        raise ToolError(f"qemu-img info gave no description of {path}")
    return info


def check_header(info: dict[str, Any], path: Path, backing: Path | None) -> None:
    """StateError unless the header's backing file is `backing` (None: none), as qcow2, with no
    external data file: anything else was not made by virtkit."""
    named = info.get("backing-filename")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise StateError(
            f"{path} keeps its data in another file ({data['data-file']}): not a disk virtkit made"
        )
    if (named or None) != (str(backing) if backing else None) or (
        named and info.get("backing-filename-format") != "qcow2"
    ):
        raise StateError(
            f"{path} names {named or 'no'} backing file, not {backing or 'none'}: its header was changed "
            "outside virtkit",
            hint="restore the instance from a backup, or delete it",
        )


def source(fd: int, backing: Path | None) -> str:
    """A `json:` filename opening the disk on `fd` over `backing` (None: over nothing), whatever its
    header says."""
    node: dict[str, Any] = {"driver": "qcow2", "file": {"driver": "file", "filename": f"/proc/self/fd/{fd}"}}
    node["backing"] = (
        {"driver": "qcow2", "file": {"driver": "file", "filename": str(backing)}} if backing else None
    )
    return "json:" + json.dumps(node, separators=(",", ":"))


def freeze(disk: Path, layer: Path, backing: Path | None) -> tuple[int, int, int, int]:
    """Move the VM's stopped disk to `layer` (same filesystem: a rename, whatever its size) and make
    it root's and read-only. Its header must name `backing`; it may hold no internal snapshot
    (their data would be frozen too). (uid, gid, mode, virtual size) of the disk, for `thaw`."""
    with opened(disk) as fd:
        info = os.fstat(fd)
        if info.st_nlink != 1:
            raise StateError(f"{disk} has {info.st_nlink} names: another link to it could write the layer")
        meta = header(fd, disk)
        check_header(meta, disk, backing)
        if meta.get("snapshots"):
            names = ", ".join(str(s.get("name")) for s in meta["snapshots"])
            raise StateError(
                f"{disk} holds internal snapshots ({names}): they cannot go into a shared layer",
                hint="delete them first (virtkit snapshot delete), or make a full copy: --full",
            )
        os.rename(disk, layer)
        try:
            moved = os.lstat(layer)
            if (moved.st_dev, moved.st_ino) != (info.st_dev, info.st_ino):
                raise StateError(f"{disk} was replaced while it was frozen")
            os.fchown(fd, 0, 0)
            os.fchmod(fd, LAYER_MODE)
        except BaseException:
            os.rename(layer, disk)
            os.fchown(fd, info.st_uid, info.st_gid)
            raise
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), int(meta.get("virtual-size", 0))


def thaw(layer: Path, disk: Path, saved: tuple[int, int, int, int]) -> None:
    """Undo `freeze`: the layer back at `disk`, with its old owner and mode."""
    uid, gid, mode, _size = saved
    with opened(layer) as fd:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    os.rename(layer, disk)


def make_overlay(disk: Path, backing: Path, size: int) -> None:
    """A new empty qcow2 at `disk` over `backing` (its format stated; -u: not opened, its size given)."""
    if os.path.lexists(disk):
        raise StateError(f"{disk} already exists")
    argv = [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        str(backing),
        "-u",
        str(disk),
        str(size),
    ]
    run(argv, f"making {disk.name} over a layer")


def convert(disk: Path, backing: Path | None, dest: Path, *, snapshot: str | None = None,
            over: Path | None = None) -> None:  # fmt: skip
    """Write the content of the VM's disk (over `backing`; with `snapshot`, of that internal
    snapshot) to a new qcow2 at `dest`: standalone, or with `over`, only what the disk itself holds
    on top of that backing file (which must be `backing` itself). Sparse: unwritten clusters stay
    unallocated; made under a temporary name and renamed into place."""
    if os.path.lexists(dest):
        raise StateError(f"{dest} already exists")
    staged = dest.with_name(f".{dest.name}.part")
    with opened(disk) as fd:
        argv = ["qemu-img", "convert", "-U", "-O", "qcow2"]
        if snapshot is not None:
            argv += ["-l", f"snapshot.name={snapshot}"]
        if over is not None:
            argv += ["-B", str(over), "-F", "qcow2"]
        argv += [source(fd, backing), str(staged)]
        try:
            run(argv, f"copying {disk}", fds=[fd], names={f"/proc/self/fd/{fd}": disk})
            os.rename(staged, dest)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise


def empty(disk: Path, backing: Path | None) -> bool:
    """Whether the disk holds no data of its own (every cluster from its backing file), by
    `qemu-img map`: a few milliseconds whatever the size, from its tables."""
    if backing is None:  # a standalone disk: its data is its own
        return False
    with opened(disk) as fd:
        argv = ["qemu-img", "map", "-U", "--output=json", source(fd, backing)]
        out = run(argv, f"reading {disk}", fds=[fd], names={f"/proc/self/fd/{fd}": disk})
    try:
        extents = json.loads(out)
    except ValueError as exc:
        raise ToolError(f"qemu-img map gave no JSON for {disk}", stderr=out[-2000:]) from exc
    return not any(isinstance(extent, dict) and extent.get("depth") == 0 and extent.get("present")
                   for extent in extents)  # fmt: skip


def virtual_size(disk: Path) -> int:
    with opened(disk) as fd:
        return int(header(fd, disk).get("virtual-size", 0))
