"""Snapshots of a VM: qcow2 internal snapshots of the disks it owns, plus copies of its small files.

Why internal: a VM's root disk is already a qcow2 overlay on its image's immutable disk; an
internal snapshot lives inside that one file (no chain of overlays to rebase, merge or carry
along), is taken in milliseconds whatever the disk's size, and is what `qemu-img snapshot` and
QEMU's own `savevm` use — what a Proxmox admin knows from `qm snapshot` on qcow2 storage.

Stopped VM: `qemu-img snapshot -c/-a/-d`. qemu-img snapshot takes no `-f`: the format is named
all the same, with `--image-opts driver=qcow2,...`, so nothing ever probes one. Running VM (its
QEMU holds the disk's write lock): one QMP `transaction` of `blockdev-snapshot-internal-sync`,
atomic across disks, on each disk's root node (the throttle filter over the qcow2 node, which
QEMU passes the snapshot down to); deleting is `blockdev-snapshot-delete-internal-sync`. Such a
snapshot is disk-only: restoring it is like booting after a power cut. The files copied whole
(the UEFI variable store) are copied with the vCPUs paused, so they match the disks.

Stateful snapshots (the RAM and device state too, kept in the first disk's internal snapshot) are
QEMU's snapshot-save and snapshot-load jobs on the same root nodes: see vmstate.py.

The disk files are QEMU's user's (it may rename them: the instance directory is sticky and
group-writable for it), so a path is never handed to qemu-img: the file is opened here without
following a symlink, checked to be a regular file, and qemu-img gets that descriptor
(/proc/self/fd/N). A symlink planted in place of a disk cannot make root write an image's shared
base disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtkit.errors import StateError, ToolError
from virtkit.images.tools import missing_tool, tail
from virtkit.storage import vmstate
from virtkit.storage.archive import remove_tree
from virtkit.storage.snapshots import Captured, copy
from virtkit.storage.vmstate import Qmp
from virtkit.store.files import temp_name

log = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT = 600.0  # an internal snapshot updates the refcount of every allocated cluster
UNDO = "virtkit-undo"  # not a valid snapshot name (virtkit's have no prefix), so never a user's

__all__ = ["UNDO", "Qmp", "VmBackend", "qemu_img", "root_nodes", "state_sizes", "tags"]


@contextlib.contextmanager
def _opened(path: Path, *, write: bool) -> Iterator[tuple[int, str]]:
    """The disk at `path` opened without following a symlink: (descriptor, image options)."""
    try:
        fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"cannot open the disk {path}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateError(f"the disk {path} is not a regular file")
        yield fd, f"driver=qcow2,file.driver=file,file.filename=/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def qemu_img(path: Path, args: list[str], what: str, *, write: bool = True) -> str:
    """Run `qemu-img ARGS... --image-opts` on the qcow2 disk at `path` (see above); its stdout."""
    with _opened(path, write=write) as (fd, options):
        argv = ["qemu-img", *args, options]
        log.debug("%s (fd %d = %s)", " ".join(argv), fd, path)
        try:
            done = subprocess.run(
                argv, pass_fds=(fd,), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                errors="replace", timeout=QEMU_IMG_TIMEOUT, check=False,
            )  # fmt: skip
        except FileNotFoundError:
            raise missing_tool("qemu-img", "qemu-utils") from None
        except subprocess.TimeoutExpired:
            late = f"{what}: qemu-img did not finish within {QEMU_IMG_TIMEOUT:g} s"
            raise ToolError(late, argv=argv) from None
    if done.returncode != 0:
        err = tail(done.stderr or done.stdout).replace(f"/proc/self/fd/{fd}", str(path))
        reason = err.splitlines()[-1] if err else "no message"
        hint = "is its QEMU still running? see `virtkit list`" if "lock" in err else None
        raise ToolError(f"{what}: qemu-img failed (exit {done.returncode}): {reason}", argv=argv,
                        returncode=done.returncode, stderr=err, hint=hint)  # fmt: skip
    return done.stdout


def state_sizes(path: Path) -> dict[str, int]:
    """The internal snapshots of the qcow2 disk at `path`: name -> bytes of VM state it holds (0 for
    a disk-only one). Read-only, without taking its lock: QEMU may hold it, and writes its
    snapshot table at once."""
    out = qemu_img(path, ["info", "--output=json", "-U", "--image-opts"], f"reading {path.name}", write=False)
    try:
        info = json.loads(out)
        return {str(entry["name"]): int(entry.get("vm-state-size", 0)) for entry in info.get("snapshots", [])}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ToolError(f"qemu-img info gave no snapshot list for {path}", stderr=out[-2000:]) from exc


def tags(path: Path) -> list[str]:
    """The names of the internal snapshots of the qcow2 disk at `path` (see `state_sizes`)."""
    return list(state_sizes(path))


@dataclass(frozen=True)
class VmBackend:
    """The snapshots of the VM whose directory is `home`. `disks`: its qcow2 disks (bare names in
    `home`, the root disk first); `files`: what is copied whole; `monitor`: its running QEMU's,
    None when stopped; `others`: its writable disks that are not its own (pool volumes), said
    when a stateful snapshot is refused for them."""

    home: Path
    disks: tuple[str, ...]
    files: tuple[str, ...] = ()
    monitor: Qmp | None = None
    freeze: bool = False  # QEMU makes a live snapshot atomic itself
    others: tuple[str, ...] = ()

    def forget(self, name: str) -> None:
        for disk in self.disks:
            if name in tags(self.home / disk):
                log.warning("removing snapshot %s of %s, left by an interrupted create", name, disk)
                self._delete(disk, name)

    def capture(self, name: str, into: Path) -> Captured:
        if not self.disks and not self.files:
            raise StateError(
                f"the VM has no disk of its own to snapshot (it runs from its image's kernel and initramfs): "
                f"nothing in {self.home} would change on restore"
            )
        if self.monitor is not None:
            self._capture_live(self.monitor, name, into)
        else:
            made: list[str] = []
            try:
                for disk in self.disks:
                    self._img(disk, "-c", name, f"snapshotting {disk}")
                    made.append(disk)
                self._copy_files(into)
            except BaseException:
                self._undo(made, name)
                raise
        notes = ("disk-only: restoring it is like starting after a power cut",) if self.monitor else ()
        return Captured(disks=self.disks, files=self.files, size=self._size(into), notes=notes)

    def capture_state(self, name: str, into: Path) -> Captured:
        """A stateful snapshot of the running (or paused) VM: see vmstate.py."""
        if self.monitor is None:
            raise StateError(
                "a stateful snapshot saves the memory of a running VM, and this one is stopped",
                hint="start it first, or take a disk-only snapshot: drop --stateful",
            )
        vmstate.preflight(self.monitor, self.disks, self.others)
        self._capture_live(self.monitor, name, into, stateful=True)
        return Captured(disks=self.disks, files=self.files, size=self._size(into), stateful=True)

    def _size(self, into: Path) -> int:
        size = sum(os.lstat(self.home / disk).st_blocks * 512 for disk in self.disks)
        return size + sum(os.lstat(into / file).st_blocks * 512 for file in self.files)

    def _capture_live(self, monitor: Qmp, name: str, into: Path, *, stateful: bool = False) -> None:
        nodes = root_nodes(monitor, [self.home / disk for disk in self.disks])
        paused_here = bool(self.files) and _run_state(monitor) == "running"
        if paused_here:  # the files must be copied as the disks are: nothing may run in between
            monitor.execute("stop")
        try:
            if stateful:
                try:
                    vmstate.save(monitor, name, nodes)
                except BaseException:
                    self._undo_present(name)  # QEMU stops at the first disk that fails
                    raise
            elif nodes:
                actions = [{"type": "blockdev-snapshot-internal-sync", "data": {"device": node, "name": name}}
                           for node in nodes]  # fmt: skip
                monitor.execute("transaction", {"actions": actions})
            try:
                self._copy_files(into)
            except BaseException:
                self._undo(list(self.disks), name)
                raise
        finally:
            if paused_here:
                monitor.execute("cont")

    def load_state(self, name: str, captured: Captured) -> None:
        """Put the running (or paused, or not yet started: -S) VM back to stateful snapshot `name`,
        disks and memory, and let it run on from there."""
        if self.monitor is None:
            raise StateError("a stateful snapshot is loaded into a running QEMU, and this VM is stopped")
        if not captured.stateful or not captured.disks:
            raise StateError(f"snapshot {name} holds no memory state: it is restored as a disk-only one")
        nodes = root_nodes(self.monitor, [self.home / disk for disk in captured.disks])
        vmstate.load(self.monitor, name, nodes)

    def _copy_files(self, into: Path) -> None:
        for file in self.files:
            source = self.home / file
            try:
                regular = stat.S_ISREG(os.lstat(source).st_mode)
            except OSError as exc:
                raise StateError(f"cannot read {source}: {exc.strerror or exc}") from exc
            if not regular:
                raise StateError(f"{source} is not a regular file")
            copy(source, into / file, what=f"copying {file}")

    def _undo(self, disks: list[str], name: str) -> None:
        for disk in disks:
            try:
                self._delete(disk, name)
            except (ToolError, StateError) as exc:  # the first failure is the one to report
                log.error("cannot remove snapshot %s of %s again: %s", name, disk, exc)

    def _undo_present(self, name: str) -> None:
        """Remove snapshot `name` from those disks that have it (after a failed save)."""
        try:
            present = [disk for disk in self.disks if name in tags(self.home / disk)]
        except (ToolError, StateError) as exc:
            log.error("cannot tell which disks hold snapshot %s: %s", name, exc)
            return
        self._undo(present, name)

    def _delete(self, disk: str, name: str) -> None:
        if self.monitor is not None:
            (node,) = root_nodes(self.monitor, [self.home / disk])
            self.monitor.execute("blockdev-snapshot-delete-internal-sync", {"device": node, "name": name})
        else:
            self._img(disk, "-d", name, f"deleting snapshot {name} of {disk}")

    def check(self, name: str, captured: Captured, source: Path) -> None:
        for index, disk in enumerate(captured.disks):
            path = self.home / disk
            sizes = state_sizes(path) if path.is_file() else {}
            if name not in sizes:
                raise StateError(f"snapshot {name} has lost its data: {path} holds no snapshot {name}",
                                 hint=f"delete it: virtkit snapshot delete INSTANCE {name}")  # fmt: skip
            if captured.stateful and index == 0 and not sizes[name]:
                raise StateError(f"snapshot {name} has lost its memory state: {path} holds its disks only",
                                 hint=f"delete it: virtkit snapshot delete INSTANCE {name}")  # fmt: skip
        for file in captured.files:
            if not (source / file).is_file():
                raise StateError(f"snapshot {name} has lost its data: {source / file} is missing",
                                 hint=f"delete it: virtkit snapshot delete INSTANCE {name}")  # fmt: skip

    def restore(self, name: str, captured: Captured, source: Path) -> None:
        """Apply the snapshot to every disk and put its files back: all of it or (undone) none. With
        more than one part, each disk first gets an UNDO snapshot of what it holds now."""
        if self.monitor is not None:
            raise StateError("a running VM's disks cannot be restored: stop it first")
        guarded = len(captured.disks) + len(captured.files) > 1
        marked: list[str] = []
        applied: list[str] = []
        replaced: list[tuple[Path, Path | None]] = []
        try:
            for disk in captured.disks if guarded else ():
                if UNDO in tags(self.home / disk):
                    self._delete(disk, UNDO)
                self._img(disk, "-c", UNDO, f"marking {disk}")
                marked.append(disk)
            for disk in captured.disks:
                self._img(disk, "-a", name, f"restoring {disk} to snapshot {name}")
                applied.append(disk)
            for file in captured.files:
                replaced.append(_replace(source / file, self.home / file))
        except BaseException:
            for disk in applied if guarded else []:
                _quietly(self._img, disk, "-a", UNDO, f"undoing the restore of {disk}")
            for target, old in reversed(replaced):
                _quietly(_put_back, target, old)
            raise
        finally:
            for disk in marked:
                _quietly(self._delete, disk, UNDO)
        for _target, old in replaced:
            if old is not None:
                remove_tree(old)

    def _img(self, disk: str, flag: str, name: str, what: str) -> None:
        """`qemu-img snapshot FLAG NAME` on one disk (stopped VM)."""
        qemu_img(self.home / disk, ["snapshot", "-q", flag, name, "--image-opts"], what)

    def remove(self, name: str, captured: Captured) -> None:
        for disk in captured.disks:
            path = self.home / disk
            if path.is_file() and name in tags(path):
                self._delete(disk, name)


def _replace(source: Path, target: Path) -> tuple[Path, Path | None]:
    """Put a copy of `source` at `target` (owner and mode of what was there); (target, the old file
    under a temporary name, or None)."""
    staged = target.with_name(temp_name(target.name))
    copy(source, staged, what=f"restoring {target.name}")
    old: Path | None = None
    try:
        if os.path.lexists(target):
            info = os.lstat(target)
            os.lchown(staged, info.st_uid, info.st_gid)
            os.chmod(staged, stat.S_IMODE(info.st_mode))
            old = target.with_name(temp_name(target.name))
            os.rename(target, old)
        os.rename(staged, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        remove_tree(staged)
        raise
    return target, old


def _put_back(target: Path, old: Path | None) -> None:
    if old is not None:
        os.replace(old, target)
    else:
        target.unlink(missing_ok=True)


def _quietly(step: Callable[..., object], *args: Any) -> None:
    """An undo step: its failure is logged, not raised (the first error is the one to report)."""
    try:
        step(*args)
    except (ToolError, StateError, OSError) as exc:
        log.error("undoing a snapshot step failed: %s", exc)


def _run_state(monitor: Qmp) -> str:
    result = monitor.execute("query-status")
    return str(result.get("status")) if isinstance(result, dict) else ""


def root_nodes(monitor: Qmp, disks: list[Path]) -> list[str]:
    """The root block node of each disk file: the node a device uses, whose chain (through
    filters such as throttle) ends at the qcow2 node of that file."""
    named = _dicts(monitor.execute("query-named-block-nodes", {"flat": True}))
    by_name = {str(node.get("node-name")): node for node in named}
    roots = [block["inserted"] for block in _dicts(monitor.execute("query-block"))
             if isinstance(block.get("inserted"), dict)]  # fmt: skip
    found = []
    for disk in disks:
        matches = [str(root.get("node-name")) for root in roots if _ends_at(root, str(disk), by_name)]
        if len(matches) != 1:
            raise ToolError(f"QEMU shows {len(matches)} block devices on {disk}, not one",
                            hint="see `virtkit show NAME --runtime`")  # fmt: skip
        found.append(matches[0])
    return found


def _dicts(listed: object) -> list[dict[str, Any]]:
    return [entry for entry in listed if isinstance(entry, dict)] if isinstance(listed, list) else []


def _ends_at(node: Mapping[str, Any], path: str, by_name: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether block node `node` (as QMP describes it) is a chain of filters over a qcow2 node on
    `path`. A filter's `file` is its chain as a "json:" filename, or a child's node name."""
    if node.get("drv") == "qcow2" and node.get("file") == path:
        return True
    text = str(node.get("file", ""))
    if not text.startswith("json:"):
        return False
    try:
        chain: object = json.loads(text.removeprefix("json:"))
    except ValueError:
        return False
    for _ in range(16):  # filters over filters, but never a cycle
        if isinstance(chain, str):  # a child named by its node name
            child = by_name.get(chain)
            return child is not None and child is not node and _ends_at(child, path, by_name)
        if not isinstance(chain, dict):
            return False
        inner = chain.get("file")
        if chain.get("driver") == "qcow2":
            leaf = inner if isinstance(inner, dict) else by_name.get(str(inner), {})
            return leaf.get("filename", leaf.get("file")) == path
        chain = inner
    return False
