"""`virtkit publish NAME [--snapshot SNAP] [--alias A]`: an instance (or one of its snapshots) made
into an image of the image store, which `launch` then uses like any other (docs/clones.md).

The image is made through the store's own import path (a staging directory, fingerprinted and
committed all or nothing): a VM gives a standalone qcow2 disk (its chain copied into one file,
sparse) beside its image's kernel and initramfs; a container gives the whole tree it sees (its
layers merged by the kernel, copied) in its own 0-based ids, as an image's tree is. The result has
no machine-id and (trees) no SSH host keys, so that each instance made from it gets its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from virtkit.drivers.base import InstancePaths, get_driver
from virtkit.errors import ConflictError, host_errors
from virtkit.images.staged import DISK, ISO, KERNEL, ROOTFS, StagedImage
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, SnapshotRecord, validate_name
from virtkit.ops.chains import ContainerChain, VmChain
from virtkit.ops.copy import Copies
from virtkit.ops.lifecycle import DriverFor
from virtkit.storage import identity, layertree, vmlayers
from virtkit.storage.snapshots import snapshot_dir
from virtkit.store import Store

DISK_NAME = "disk.qcow2"
ROOTFS_NAME = "rootfs"


class Publisher:
    """Publishing instances of one state root as images."""

    def __init__(self, root: Path, store: Store, drivers: DriverFor = get_driver) -> None:
        self.root = root
        self.store = store
        self.copies = Copies(root, store, drivers)

    def check(self, name: str, *, alias: str | None = None, snapshot: str | None = None) -> str:
        """What `publish` would refuse before it changes anything, raised now, without a lock (for
        callers that answer before the work runs, as the API does; `publish` checks again); the
        alias the image would get."""
        wanted = validate_name(name)
        chosen = validate_name(alias or wanted, what="image alias")
        snap = validate_name(snapshot, what="snapshot name") if snapshot is not None else None
        holder = next((image for image in self.copies.images().list() if chosen in image.aliases), None)
        if holder is not None:
            raise ConflictError(f"image alias {chosen!r} is already image {holder.fingerprint[:12]}'s",
                                hint="pick another with --alias, or remove it: virtkit image alias remove "
                                f"{chosen}")  # fmt: skip
        record = self.store.get(InstanceRecord, wanted)
        if snap is not None:
            self.store.get(SnapshotRecord, wanted, snap)
        else:
            self.copies._require_stopped(record, "published")
        return chosen

    def publish(self, name: str, *, alias: str | None = None, snapshot: str | None = None) -> ImageRecord:
        """Make an image of instance `name` (stopped), or of its snapshot `snapshot`; named `alias`
        (default: the instance's name), which no other image may hold."""
        wanted = validate_name(name)
        chosen = validate_name(alias or wanted, what="image alias")
        snap = validate_name(snapshot, what="snapshot name") if snapshot is not None else None
        images = self.copies.images()
        holder = next((image for image in images.list() if chosen in image.aliases), None)
        if holder is not None:
            raise ConflictError(f"image alias {chosen!r} is already image {holder.fingerprint[:12]}'s",
                                hint="pick another with --alias, or remove it: virtkit image alias remove "
                                f"{chosen}")  # fmt: skip
        self.store.get(InstanceRecord, wanted)
        with self.copies._locked(wanted), host_errors(f"publishing {wanted}"):
            record = self.store.get(InstanceRecord, wanted)
            if snap is not None:
                self.store.get(SnapshotRecord, wanted, snap)
            else:
                self.copies._require_stopped(record, "published")
            image = images.store.get(ImageRecord, record.image or "")
            paths = self.copies.paths(wanted)
            with images.staging() as staging:
                if record.kind is InstanceKind.VM:
                    staged = _vm(record, paths, image, images.path(image), snap, staging)
                else:
                    staged = _container(record, paths, image, images.path(image), snap, staging)
                staged.name = chosen
                return images.commit(staged, staging, alias=chosen)


def _vm(record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path, snap: str | None,
        staging: Path) -> StagedImage:  # fmt: skip
    disk = staging / DISK_NAME
    vmlayers.convert(paths.dir / "root.qcow2", VmChain().backing(record, paths, image, image_dir), disk,
                     snapshot=snap)  # fmt: skip
    identity.clear_disk(disk, None)
    files = {DISK: DISK_NAME}
    for role, file in image.files.items():  # the kernel, initramfs (not the old disk, tree or media)
        if role not in (DISK, ROOTFS, ISO):
            _link(image_dir / file, staging / file)
            files[role] = file
    vmlinux = image.properties.get("vmlinux")
    if vmlinux and (image_dir / vmlinux).is_file():
        _link(image_dir / vmlinux, staging / vmlinux)
    properties = {key: value for key, value in image.properties.items() if key != "el_torito"}
    return StagedImage(
        name=record.name, kinds=[InstanceKind.VM.value], arch=record.arch,
        format=image.format if KERNEL in files else "qcow2", source=_source(record, snap),
        files=files, virtual_size=vmlayers.virtual_size(disk), properties=properties,
        container=dict(image.container),
    )  # fmt: skip


def _container(record: InstanceRecord, paths: InstancePaths, image: ImageRecord, image_dir: Path,
               snap: str | None, staging: Path) -> StagedImage:  # fmt: skip
    from virtkit.drivers.oci.plan import ContainerFiles
    from virtkit.drivers.oci.rootfs import METACOPY, saved_shift

    shift = saved_shift(paths.dir)
    upper = snapshot_dir(paths.dir, snap) / "upper" if snap else ContainerFiles(paths).upper
    tree = staging / ROOTFS_NAME
    lowers = [upper, *ContainerChain().lowers(record, paths, image, image_dir)]
    layertree.merged_copy(lowers, tree, metacopy=bool(shift and shift.mode == METACOPY))
    layertree.move_ids(tree, shift, None)
    _clear_tree(tree)
    return StagedImage(
        name=record.name, kinds=[InstanceKind.CONTAINER.value], arch=record.arch, format=image.format,
        source=_source(record, snap), files={ROOTFS: ROOTFS_NAME}, properties=dict(image.properties),
        container=dict(image.container),
    )  # fmt: skip


def _clear_tree(tree: Path) -> None:
    """No machine-id (left empty, as the Debian image leaves it) and no SSH host keys in a tree."""
    machine_id = tree / identity.MACHINE_ID
    if machine_id.is_file() and not machine_id.is_symlink() and machine_id.stat().st_size:
        machine_id.write_bytes(b"")
    keys = tree / identity.SSH_DIR
    if keys.is_dir() and not keys.is_symlink():
        for entry in keys.iterdir():
            if entry.name.startswith("ssh_host_") and not entry.is_dir():
                entry.unlink()


def _link(source: Path, dest: Path) -> None:
    """An image file shared with the source image (a hard link: images are never written)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _source(record: InstanceRecord, snap: str | None) -> str:
    return f"published from instance {record.name}" + (f" (snapshot {snap})" if snap else "")
