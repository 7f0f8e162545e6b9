"""A stopped VM's disk opened offline, writable, for guest conversion (ops/convert.py).

How (chosen and measured on this host, which can load no kernel module: no nbd):

- the disk is never written directly: a qcow2 overlay on it (``qemu-img create -b disk -F qcow2``)
  takes every write; the caller commits it (``qemu-img commit``) only when the whole conversion
  succeeded, else deletes it: a failure loses nothing;
- qemu-storage-daemon exports the overlay as a raw file through FUSE (``type=fuse,writable=on``);
- ``losetup -P`` does not work here (the loop device's partitions get no device nodes: no udev),
  so the partition table is read by images/guestboot.py ``read_layout`` and each partition gets a
  loop device of its own (``losetup --offset --sizelimit``); a bare filesystem is one "partition";
- everything is mounted in a private mount namespace only (``in_private_namespace``: a forked
  child that unshares its mount namespace; its mounts vanish with it, the host never sees them).

An export plus the loop devices takes well under a second; a conversion's time is update-initramfs.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import subprocess
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from virtkit import errors
from virtkit.errors import StateError, ToolError, VirtkitError
from virtkit.storage import fuseexport

log = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18


@dataclass(frozen=True)
class Part:
    """One partition (index from 1, as the guest numbers them: sda1 is 1; 0: a bare filesystem)."""

    index: int
    loop: str
    uuid: str = ""
    fstype: str = ""


def _run(argv: list[str], timeout: float = 60) -> str:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
    except FileNotFoundError:
        raise ToolError(f"{argv[0]} is missing") from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"{argv[0]} took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        raise ToolError(f"{' '.join(argv[:3])} failed: {done.stderr.strip()[-300:]}")
    return done.stdout


def make_overlay(disk: Path, overlay: Path) -> None:
    """A qcow2 overlay on `disk` that takes every write of the conversion."""
    fmt = json.loads(_run(["qemu-img", "info", "--output=json", "-U", str(disk)])).get("format", "")
    if fmt not in ("qcow2", "raw"):
        raise StateError(f"{disk.name} is a {fmt or 'unknown'} disk, not qcow2 or raw")
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk.absolute()), "-F", fmt, str(overlay)])


def commit_overlay(overlay: Path) -> None:
    """Write the overlay's changes into its backing disk (the end of a successful conversion)."""
    _run(["qemu-img", "commit", "-q", str(overlay)], timeout=600)


@contextlib.contextmanager
def exported(disk: Path) -> Iterator[Path]:
    """The qcow2 `disk` as a writable raw file (a FUSE export by qemu-storage-daemon)."""
    node = fuseexport.qcow2_node(disk, writable=True)
    with fuseexport.exported(node, writable=True, what=str(disk)) as raw:
        yield raw


@contextlib.contextmanager
def attached(raw: Path) -> Iterator[list[Part]]:
    """A loop device for each partition of the raw file `raw` (or for it whole: a bare filesystem)."""
    from virtkit.images.guestboot import read_layout

    fd = os.open(raw, os.O_RDONLY | os.O_CLOEXEC)
    try:
        layout = read_layout(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    spans = [(i + 1, p.start, p.size) for i, p in enumerate(layout.partitions)]
    loops: list[str] = []
    try:
        if not spans:
            loops.append(_run(["losetup", "--show", "-f", str(raw)]).strip())
        for _index, offset, size in spans:
            argv = ["losetup", "--show", "-f", "-o", str(offset), "--sizelimit", str(size), str(raw)]
            loops.append(_run(argv).strip())
        indexes = [s[0] for s in spans] or [0]
        yield [_probe(index, loop) for index, loop in zip(indexes, loops, strict=True)]
    finally:
        for loop in loops:
            with contextlib.suppress(ToolError):
                _run(["losetup", "-d", loop])


def _probe(index: int, loop: str) -> Part:
    try:
        out = _run(["blkid", "-o", "export", loop])
    except ToolError:  # no filesystem blkid knows (swap is one it knows)
        return Part(index, loop)
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return Part(index, loop, fields.get("UUID", ""), fields.get("TYPE", ""))


def in_private_namespace(work: Callable[[], Any], timeout: float = 1800) -> Any:
    """`work()` run in a forked child with a private mount namespace of its own; its JSON result.
    Its mounts die with it. A VirtkitError it raises is raised here again (with its message)."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(reader)
        code = 0
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNS) != 0:
                raise ToolError(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
            if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
                raise ToolError(f"making / private: {os.strerror(ctypes.get_errno())}")
            payload = {"ok": work()}
        except VirtkitError as exc:
            payload, code = {"error": str(exc), "type": type(exc).__name__, "hint": exc.hint}, 1
        except BaseException:  # reported to the parent, which raises
            payload, code = {"error": traceback.format_exc()[-1500:], "type": "ToolError"}, 1
        with contextlib.suppress(BaseException):
            os.write(writer, json.dumps(payload, default=_plain).encode())
        os._exit(code)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    try:
        payload = json.loads(data or b"{}")
    except ValueError:
        payload = {}
    if "ok" in payload:
        return payload["ok"]
    message = payload.get("error", "the conversion's process died")
    kind = getattr(errors, str(payload.get("type", "")), ToolError)
    if not (isinstance(kind, type) and issubclass(kind, VirtkitError)):
        kind = ToolError
    try:
        error = kind(message, hint=payload.get("hint"))
    except TypeError:
        error = ToolError(message, hint=payload.get("hint"))
    raise error


def _plain(value: object) -> object:
    if isinstance(value, Part):
        return asdict(value)
    return str(value)


def mount(device: str, point: Path, fstype: str = "", options: str = "") -> None:
    """Mount (only inside `in_private_namespace`), nodev: no device node of the guest opens a host device."""
    argv = ["mount", *(["-t", fstype] if fstype else []), "-o", ",".join(filter(None, ["nodev", options])),
            device, str(point)]  # fmt: skip
    _run(argv)


def bind(source: str, point: Path) -> None:
    """A bind mount (recursive), inside `in_private_namespace` only."""
    _run(["mount", "--rbind", source, str(point)])


def unmount_all(point: Path) -> None:
    """Unmount everything at and under `point` (lazy: the namespace goes anyway)."""
    with contextlib.suppress(ToolError):
        _run(["umount", "-R", "-l", str(point)])
