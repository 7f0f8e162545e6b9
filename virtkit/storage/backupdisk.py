"""A VM's qcow2 disks in a backup: each state (every snapshot, then the disk as it is) as the
differences to the one before, and the disk rebuilt from them on import, snapshots included.

`qemu-img convert` makes a disk standalone but drops its internal snapshots. So export converts
each state on its own — a snapshot with ``-l snapshot.name=SNAP``, a running VM's present through
a temporary internal snapshot (storage/vmsnap.py), read with ``-U`` while QEMU holds the disk —
and stores:

- the first state as the differences to the image's disk (``convert -B``: only what the VM
  wrote; the image travels in the archive too), or whole when the disk has no such base;
- each later state as the differences to the one before: an empty overlay of the newer state
  rebased (safe mode) onto the older one, which writes into it exactly the clusters whose content
  differs — however the states relate (restores in between, discards).

Every disk in the archive has its backing file reference removed (``rebase -u -b ""``): a disk
in a backup never names another file; the manifest says what it is relative to. Import checks
each disk as an untrusted image (images/headers.py, images/diskinfo.py: no backing file, no
external data file, no ``json:`` name, clean `qemu-img check`), then rebuilds the disk: the first
state over the image's disk, each later one committed into it (``qemu-img commit``: its clusters
written in, copy-on-write against the snapshot just taken, so snapshots share what they share on
the source), ``qemu-img snapshot -c`` after each snapshot's state.

The instance's disk is opened here without following a symlink and handed to qemu-img as
/proc/self/fd/N, its base pinned the same way (`"backing"` in a json: name), so a header the
VM's QEMU user rewrote cannot make root's qemu-img read another file into the archive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtkit.errors import RejectedError, StateError, ToolError
from virtkit.images.diskinfo import check_image, read_info
from virtkit.images.headers import inspect_headers
from virtkit.images.source import fd_path
from virtkit.images.tools import missing_tool
from virtkit.storage.vmsnap import qemu_img
from virtkit.units import MiB, TiB

log = logging.getLogger(__name__)

OPTIONS = "compat=1.1,lazy_refcounts=off,extended_l2=off,preallocation=off"
MAX_VIRTUAL_SIZE = 64 * TiB  # as a volume: what virtkit itself would make


def _timeout(size: int) -> float:
    return 600.0 + size / (20 * MiB)


def _run(args: list[str], what: str, size: int = 0, fds: tuple[int, ...] = ()) -> str:
    """`qemu-img ARGS...` (given the open `fds`); its stdout. ToolError when it fails."""
    argv = ["qemu-img", *args]
    log.debug("%s", " ".join(argv))
    try:
        done = subprocess.run(argv, pass_fds=fds, capture_output=True, text=True, errors="replace",
                              timeout=_timeout(size), check=False, stdin=subprocess.DEVNULL)  # fmt: skip
    except FileNotFoundError:
        raise missing_tool("qemu-img", "qemu-utils") from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"{what}: qemu-img did not finish within {_timeout(size):.0f} s", argv=argv) from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise ToolError(f"{what}: qemu-img failed: {said[-1] if said else done.returncode}",
                        argv=argv, returncode=done.returncode, stderr=done.stderr[-2000:])  # fmt: skip
    return done.stdout


@contextlib.contextmanager
def _open(path: Path) -> Iterator[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"cannot open the disk {path}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateError(f"the disk {path} is not a regular file")
        yield fd
    finally:
        os.close(fd)


def _node(fd: int, backing: dict[str, Any] | bool | None) -> dict[str, Any]:
    node: dict[str, Any] = {"driver": "qcow2", "file": {"driver": "file", "filename": f"/proc/self/fd/{fd}"}}
    if backing is not True:  # True: as the header says
        node["backing"] = backing
    return node


def header_backing(path: Path) -> str | None:
    """The backing file the disk's header names (as written there), without opening it."""
    with _open(path) as fd:
        out = _run(["info", "-U", "--output=json", "json:" + json.dumps(_node(fd, None))],
                   f"reading {path.name}", fds=(fd,))  # fmt: skip
    info = json.loads(out)
    value = info.get("backing-filename") if isinstance(info, dict) else None
    return str(value) if value else None


@dataclass(frozen=True)
class DiskSource:
    """A VM's qcow2 disk as export reads it. `base`: the image disk it overlays (its differences
    are exported), else None (exported whole, through its chain when `chain`). `live`: QEMU holds it."""

    path: Path
    base: Path | None
    live: bool
    chain: bool = False

    @classmethod
    def of(cls, path: Path, image_disk: Path | None, root: Path, live: bool) -> DiskSource:
        """How to read `path`: over the image's disk when its header names exactly that file;
        whole when it names none; through its chain when every file of it is root's own under
        the state `root` (a linked clone's); refused otherwise."""
        named = header_backing(path)
        if named is None:
            return cls(path, None, live)
        if image_disk is not None and os.path.abspath(named) == os.path.abspath(image_disk):
            return cls(path, image_disk, live)
        _check_chain(path, root)
        return cls(path, None, live, chain=True)


def _check_chain(path: Path, root: Path) -> None:
    argv = ["info", "-U", "--backing-chain", "--output=json", "-f", "qcow2", str(path)]
    out = _run(argv, f"reading {path}")
    top = os.path.realpath(root)
    for layer in json.loads(out)[1:]:
        name = os.path.realpath(str(layer.get("filename", "")))
        info = os.lstat(name)
        if not name.startswith(top + "/") or info.st_uid != 0 or not stat.S_ISREG(info.st_mode):
            raise StateError(
                f"the disk {path} is backed by {name}, which is not a file of virtkit's under {root}",
                hint="flatten it first (qemu-img convert) or export the instance it was cloned from",
            )


def convert_state(source: DiskSource, state: str | None, out: Path) -> None:
    """Write state `state` (a snapshot's name; None: the disk as it is) of `source` to the new
    qcow2 `out`: its differences to `source.base` (then `out` names it as backing), or whole."""
    with contextlib.ExitStack() as stack:
        fd = stack.enter_context(_open(source.path))
        fds = [fd]
        backing: dict[str, Any] | bool | None = True if source.chain else None
        if source.base is not None:
            base_fd = stack.enter_context(_open(source.base))
            fds.append(base_fd)
            backing = _node(base_fd, None)
        args = ["convert", "-q", "-t", "unsafe", *(["-U"] if source.live else [])]
        args += ["-l", f"snapshot.name={state}"] if state is not None else []
        args += ["-O", "qcow2", "-o", OPTIONS]
        args += ["-B", str(source.base), "-F", "qcow2"] if source.base is not None else []
        # a chain whose every file was checked as root's own under the state root is followed as is
        spec = str(source.path) if source.chain else "json:" + json.dumps(_node(fd, backing))
        size = os.fstat(fd).st_size
        _run([*args, spec, str(out)], f"reading {source.path.name}" + (f" at {state}" if state else ""),
             size, tuple(fds))  # fmt: skip


def delta(newer: Path, older: Path, out: Path) -> None:
    """`out`: the clusters of `newer` whose content differs from `older` (both our own files)."""
    _run(["create", "-q", "-f", "qcow2", "-o", OPTIONS, "-b", str(newer), "-F", "qcow2", str(out)],
         f"comparing {newer.name}")  # fmt: skip
    _run(["rebase", "-q", "-t", "unsafe", "-f", "qcow2", "-b", str(older), "-F", "qcow2", str(out)],
         f"comparing {newer.name} with {older.name}", os.lstat(newer).st_size)  # fmt: skip


def set_backing(disk: Path, base: Path | None) -> None:
    """Change what the header of our own `disk` names as its backing file (None: nothing). Not
    synced: what is exported is read at once, what is imported is synced when it is placed."""
    args = ["-b", str(base), "-F", "qcow2"] if base is not None else ["-b", ""]
    _run(["rebase", "-q", "-u", "-t", "unsafe", "-f", "qcow2", *args, str(disk)], f"relinking {disk.name}")


def virtual_size(disk: Path) -> int:
    info = json.loads(_run(["info", "--output=json", "-f", "qcow2", str(disk)], f"reading {disk.name}"))
    return int(info["virtual-size"])


def check_part(path: Path, name: str, expected_size: int) -> None:
    """RejectedError unless `path` is a clean, self-contained qcow2 of `expected_size` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        inspect_headers(fd, "qcow2", size, name, MAX_VIRTUAL_SIZE)
        info = read_info(fd_path(fd), "qcow2", name=name, max_virtual_size=MAX_VIRTUAL_SIZE, pass_fds=(fd,))
        check_image(fd_path(fd), "qcow2", name=name, virtual_size=info.virtual_size, pass_fds=(fd,))
    finally:
        os.close(fd)
    if info.virtual_size != expected_size:
        raise RejectedError(f"{name} is a disk of {info.virtual_size} bytes, not the {expected_size} "
                            "its manifest says")  # fmt: skip


def assemble(states: list[tuple[Path, str | None]], base: Path | None, out: Path) -> None:
    """Rebuild a disk at `out` from its states, oldest first ((file, snapshot name or None)); the
    first over `base` (None: it is whole), each later one the differences to the one before."""
    first, _ = states[0]
    os.rename(first, out)
    if base is not None:
        set_backing(out, base)
    for index, (path, name) in enumerate(states):
        if index:
            set_backing(path, out)
            _run(["commit", "-q", "-d", "-t", "unsafe", "-f", "qcow2", str(path)],
                 f"applying {path.name}", os.lstat(path).st_size)  # fmt: skip
            path.unlink()
        if name is not None:
            qemu_img(out, ["snapshot", "-q", "-c", name, "--image-opts"], f"recording snapshot {name}")


def apply_onto(delta: Path, disk: Path) -> None:
    """Write the clusters of our own `delta` into the instance's `disk` (its active layer), the disk
    opened here without following a symlink and given to qemu-img as /proc/self/fd/N."""
    try:
        fd = os.open(disk, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"cannot open the disk {disk}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateError(f"the disk {disk} is not a regular file")
        set_backing(delta, Path(f"/proc/self/fd/{fd}"))
        _run(["commit", "-q", "-d", "-t", "unsafe", "-f", "qcow2", str(delta)], f"applying {delta.name}",
             os.lstat(delta).st_size, (fd,))  # fmt: skip
    finally:
        os.close(fd)


_BACKING_FORMAT_EXT = 0xE2792ACA
_UNSAFE_FEATURES = 0b111  # dirty, corrupt, external data file


def unlinked_header(head: bytes) -> tuple[bytes, int] | None:
    """The start of a qcow2 file (`head`: its first cluster at least) rewritten to name no backing
    file, and its virtual size; None when the file is not a plain one to stream as it is: not
    qcow2 version 2 or 3, internal snapshots, dirty, corrupt, or an external data file."""
    if len(head) < 104 or head[:4] != b"QFI\xfb":
        return None
    version = int.from_bytes(head[4:8], "big")
    offset, name_size = int.from_bytes(head[8:16], "big"), int.from_bytes(head[16:20], "big")
    cluster = 1 << int.from_bytes(head[20:24], "big")
    snapshots = int.from_bytes(head[60:64], "big")
    if version not in (2, 3) or snapshots or offset + name_size > min(cluster, len(head)):
        return None
    if version == 3 and int.from_bytes(head[72:80], "big") & _UNSAFE_FEATURES:
        return None
    start = int.from_bytes(head[100:104], "big") if version == 3 else 72
    kept, position = [], start
    while position + 8 <= min(cluster, len(head)):
        kind, length = int.from_bytes(head[position : position + 4], "big"), int.from_bytes(
            head[position + 4 : position + 8], "big")  # fmt: skip
        if kind == 0:
            break
        end = position + 8 + (length + 7) // 8 * 8
        if end > min(cluster, len(head)):
            return None
        if kind != _BACKING_FORMAT_EXT:
            kept.append(head[position:end])
        position = end
    else:
        return None
    area_end = max(position + 8, offset + name_size if offset else 0)
    area = b"".join(kept) + bytes(8)
    if len(area) > area_end - start:
        return None
    new = bytearray(head[:area_end])
    new[8:20] = bytes(12)  # no backing file name
    new[start:area_end] = area.ljust(area_end - start, b"\0")
    return bytes(new), int.from_bytes(head[24:32], "big")
