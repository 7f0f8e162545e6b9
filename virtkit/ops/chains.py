"""How each kind of instance's top and layers are frozen, extracted, copied and flattened: the disk
side of ops/copy.py and ops/publish.py, one class per kind (tests give a fake one).

VMs (storage/vmlayers.py): the top is root.qcow2; a layer is a qcow2 file over the next one (or
the image's disk); full copies and flattened disks are standalone qcow2 files (`base` "own"),
written sparse by `qemu-img convert`. Containers (storage/layertree.py): the top is upper/; a
layer is an overlayfs layer in the container's own ids; a full copy of a container resting on
layers, or a flattened one, gets its own whole tree in base/ (`base` "own") that the kernel merged
from its layers, and keeps its upper/ as it is.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from virtkit.drivers.base import InstancePaths
from virtkit.errors import StateError
from virtkit.images.staged import DISK, ROOTFS
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord
from virtkit.storage import identity, layertree, vmlayers
from virtkit.storage.archive import remove_tree
from virtkit.storage.layers import layer_path, make_home, root_of
from virtkit.storage.snapshots import copy, snapshot_dir

if TYPE_CHECKING:
    from virtkit.drivers.oci.rootfs import Shift

DISK_FILE = "root.qcow2"
UEFI_FILE = "efivars.fd"
BASE_DIR = "base"


class Chain(Protocol):
    """The disk side of copies for one kind. `image_dir` is the directory of the record's image."""

    def freeze(self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path,
               layers: list[str]) -> tuple[list[str], str]:  # fmt: skip
        """Move the stopped instance's own top into new layer(s) (ids taken from `layers`) and give
        it a new empty top on them; (the layers it now rests on, its new base)."""

    def unfreeze(self, record: InstanceRecord, paths: InstancePaths, frozen: list[str]) -> None:
        """Undo `freeze` (`record` as it was before)."""

    def empty(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> bool:
        """Whether the instance's own top holds nothing (it has not run since it was made or frozen)."""

    def extract(self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path,
                snapshot: str | None, layer: str) -> None:  # fmt: skip
        """Make layer `layer`, over the instance's chain, of what snapshot `snapshot` holds (None:
        of what the stopped instance's own top holds now; the top itself is left as it is)."""

    def fill(self, source: InstanceRecord, spaths: InstancePaths, image: ImageRecord, image_dir: Path,
             snapshot: str | None, target: InstanceRecord, tpaths: InstancePaths) -> str:  # fmt: skip
        """Put a full copy of the source's content (or its snapshot's) into the prepared target;
        the target's new base."""

    def linked(self, source: InstanceRecord, spaths: InstancePaths, target: InstancePaths) -> None:
        """What a linked clone takes from its source besides its layers (a VM's UEFI variables)."""

    def flatten(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> str:
        """Make the stopped instance depend on no layer; its new base."""

    def identity(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> str:
        """Clear the new clone's machine-id (and a container's SSH host keys); a note, or ""."""


def chain_for(kind: InstanceKind) -> Chain:
    return VmChain() if kind is InstanceKind.VM else ContainerChain()


def _copy_file(source: Path, dest: Path) -> None:
    """A small file of the instance (UEFI variables), copied whole beside the clone's others."""
    if source.is_file() and not source.is_symlink():
        if os.path.lexists(dest):
            os.unlink(dest)
        shutil.copyfile(source, dest, follow_symlinks=False)


class VmChain:
    """qcow2 chains (see the module docstring)."""

    def __init__(self) -> None:
        self._saved: dict[str, tuple[int, int, int, int]] = {}  # what `freeze` changed, for `unfreeze`

    def backing(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> Path | None:
        """What the VM's root.qcow2 must rest on: its nearest layer, its image's disk, or nothing."""
        if record.layers:
            return layer_path(root_of(paths.dir), record.layers[0], record.kind)
        if record.base == "own" or DISK not in image.files:
            return None
        return image_dir / image.files[DISK]

    def freeze(self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path,
               layers: list[str]) -> tuple[list[str], str]:  # fmt: skip
        disk = paths.dir / DISK_FILE
        layer = layer_path(root_of(paths.dir), layers[0], record.kind)
        saved = vmlayers.freeze(disk, layer, self.backing(record, paths, image, image_dir))
        try:
            vmlayers.make_overlay(disk, layer, saved[3])
        except BaseException:
            vmlayers.thaw(layer, disk, saved)
            raise
        self._saved[layers[0]] = saved
        return [layers[0], *record.layers], record.base

    def empty(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> bool:
        return vmlayers.empty(paths.dir / DISK_FILE, self.backing(record, paths, image, image_dir))

    def unfreeze(self, record: InstanceRecord, paths: InstancePaths, frozen: list[str]) -> None:
        disk = paths.dir / DISK_FILE
        disk.unlink(missing_ok=True)
        vmlayers.thaw(layer_path(root_of(paths.dir), frozen[0], record.kind), disk, self._saved[frozen[0]])

    def extract(self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path,
                snapshot: str | None, layer: str) -> None:  # fmt: skip
        below = self.backing(record, paths, image, image_dir)
        dest = make_home(root_of(paths.dir), layer, record.kind)
        vmlayers.convert(paths.dir / DISK_FILE, below, dest, snapshot=snapshot, over=below)
        os.chmod(dest, vmlayers.LAYER_MODE)

    def fill(self, source: InstanceRecord, spaths: InstancePaths, image: ImageRecord, image_dir: Path,
             snapshot: str | None, target: InstanceRecord, tpaths: InstancePaths) -> str:  # fmt: skip
        disk = tpaths.dir / DISK_FILE
        disk.unlink(missing_ok=True)
        vmlayers.convert(spaths.dir / DISK_FILE, self.backing(source, spaths, image, image_dir), disk,
                         snapshot=snapshot)  # fmt: skip
        self.linked(source, spaths, tpaths, snapshot)
        return "own"

    def linked(self, source: InstanceRecord, spaths: InstancePaths, target: InstancePaths,
               snapshot: str | None = None) -> None:  # fmt: skip
        origin = snapshot_dir(spaths.dir, snapshot) if snapshot else spaths.dir
        _copy_file(origin / UEFI_FILE, target.dir / UEFI_FILE)

    def flatten(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> str:
        disk = paths.dir / DISK_FILE
        flat = paths.dir / f".{DISK_FILE}.flat"
        flat.unlink(missing_ok=True)
        vmlayers.convert(disk, self.backing(record, paths, image, image_dir), flat)
        os.replace(flat, disk)
        return "own"

    def identity(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> str:
        disk = paths.dir / DISK_FILE
        if not disk.is_file():
            return ""
        note = identity.clear_disk(disk, self.backing(record, paths, image, image_dir))
        return f"{record.name}: {note}" if note else ""


@dataclass(frozen=True)
class ContainerChain:
    """overlayfs layers (see the module docstring)."""

    def lowers(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> list[Path]:
        """The container's read-only layers, nearest first, the last a whole tree."""
        root = root_of(paths.dir)
        layers = [layer_path(root, layer, record.kind) for layer in record.layers]
        if record.base == "own":
            return [*layers, paths.dir / BASE_DIR]
        if record.base == "layer":
            return layers
        return [*layers, image_dir / image.files[ROOTFS]]

    def freeze(self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path,
               layers: list[str]) -> tuple[list[str], str]:  # fmt: skip
        from virtkit.drivers.oci.plan import ContainerFiles
        from virtkit.drivers.oci.rootfs import saved_shift

        files, root, shift = ContainerFiles(paths), root_of(paths.dir), saved_shift(paths.dir)
        top = make_home(root, layers[0], record.kind)
        layertree.freeze_tree(files.upper, top, shift)
        frozen, base = [layers[0], *record.layers], record.base
        if record.base == "own":  # its own base goes under the layer too, as a whole tree
            os.rename(paths.dir / BASE_DIR, make_home(root, layers[1], record.kind))
            frozen, base = [layers[0], layers[1]], "layer"
        _fresh(files.upper, files.work, shift)
        return frozen, base

    def empty(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> bool:
        from virtkit.drivers.oci.plan import ContainerFiles

        upper = ContainerFiles(paths).upper
        return upper.is_dir() and not upper.is_symlink() and not os.listdir(upper)

    def unfreeze(self, record: InstanceRecord, paths: InstancePaths, frozen: list[str]) -> None:
        from virtkit.drivers.oci.plan import ContainerFiles
        from virtkit.drivers.oci.rootfs import saved_shift

        files, root = ContainerFiles(paths), root_of(paths.dir)
        remove_tree(files.upper)
        if record.base == "own":
            os.rename(layer_path(root, frozen[1], record.kind), paths.dir / BASE_DIR)
        layertree.thaw_tree(layer_path(root, frozen[0], record.kind), files.upper, saved_shift(paths.dir))

    def extract(self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path,
                snapshot: str | None, layer: str) -> None:  # fmt: skip
        from virtkit.drivers.oci.plan import ContainerFiles
        from virtkit.drivers.oci.rootfs import saved_shift

        if record.base == "own":  # its own tree is not a layer a clone could rest on
            raise StateError(
                f"container {record.name!r} rests on a tree of its own (a full copy or a flattened "
                "clone), which a linked copy shares only by freezing it: not while it has snapshots",
                hint="make a full copy (--full), or delete its snapshots first",
            )
        dest = make_home(root_of(paths.dir), layer, record.kind)
        upper = snapshot_dir(paths.dir, snapshot) / "upper" if snapshot else ContainerFiles(paths).upper
        copy(upper, dest, what=f"copying snapshot {snapshot}" if snapshot else "copying the writable layer")
        try:
            layertree.move_ids(dest, saved_shift(paths.dir), None)
        except BaseException:
            remove_tree(dest)
            raise

    def fill(self, source: InstanceRecord, spaths: InstancePaths, image: ImageRecord, image_dir: Path,
             snapshot: str | None, target: InstanceRecord, tpaths: InstancePaths) -> str:  # fmt: skip
        from virtkit.drivers.oci.plan import ContainerFiles
        from virtkit.drivers.oci.rootfs import METACOPY, saved_shift

        upper = snapshot_dir(spaths.dir, snapshot) / "upper" if snapshot else ContainerFiles(spaths).upper
        mine, theirs = saved_shift(tpaths.dir), saved_shift(spaths.dir)
        lowers = self.lowers(source, spaths, image, image_dir)
        base = "image"
        if source.layers or source.base != "image":
            layertree.merged_copy(
                lowers, tpaths.dir / BASE_DIR, metacopy=bool(theirs and theirs.mode == METACOPY)
            )
            base = "own"
        files = ContainerFiles(tpaths)
        remove_tree(files.upper)
        copy(upper, files.upper, what="copying the writable layer")
        layertree.move_ids(files.upper, theirs, mine)
        _fresh(None, files.work, mine)
        return base

    def linked(self, source: InstanceRecord, spaths: InstancePaths, target: InstancePaths) -> None:
        """Nothing: a container has no small files of its own to carry."""

    def flatten(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> str:
        from virtkit.drivers.oci.rootfs import METACOPY, saved_shift

        shift = saved_shift(paths.dir)
        staged = paths.dir / f".{BASE_DIR}.flat"
        remove_tree(staged)
        layertree.merged_copy(self.lowers(record, paths, image, image_dir), staged,
                              metacopy=bool(shift and shift.mode == METACOPY))  # fmt: skip
        if os.path.lexists(paths.dir / BASE_DIR):
            raise StateError(f"{paths.dir / BASE_DIR} is in the way", hint="move it away")
        os.rename(staged, paths.dir / BASE_DIR)
        return "own"

    def identity(
        self, record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path
    ) -> str:
        from virtkit.drivers.oci.plan import ContainerFiles
        from virtkit.drivers.oci.rootfs import saved_shift

        lowers = self.lowers(record, paths, image, image_dir)
        identity.clear_upper(ContainerFiles(paths).upper, lowers, saved_shift(paths.dir))
        return ""


def _fresh(upper: Path | None, work: Path, shift: Shift | None) -> None:
    """A new empty upper (when given) and work directory, the container's root's (as rootfs.prepare
    makes them): overlayfs wants no scratch of another mount in work/."""
    remove_tree(work)
    for directory in (upper, work):
        if directory is None:
            continue
        directory.mkdir(mode=0o755)
        if shift is not None:
            os.chown(directory, shift.uid, shift.gid)
