"""A VM's own root disk: a qcow2 overlay linked to its image's immutable disk, or an empty disk.

The overlay records its backing file's format (`-F qcow2`), so neither qemu-img nor QEMU ever
probes a format. Growing it (`disk_size`) grows the virtual disk only: the guest's filesystem is
grown by the guest (or by a later resize step), never by the host.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from virtkit.errors import ConflictError, SpecError
from virtkit.images.staged import DISK
from virtkit.images.tools import run_tool
from virtkit.model import GiB, ImageRecord, InstanceRecord, TiB, format_size, parse_size

log = logging.getLogger(__name__)

EMPTY_DISK_SIZE = 8 * GiB  # an ISO install's disk when no --disk size is given (sparse)
MAX_DISK_SIZE = 64 * TiB  # as a volume's (storage/volumes.py): beyond it a size is a typo, not a disk
QEMU_IMG_TIMEOUT = 60.0


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def requested_size(record: InstanceRecord) -> int | None:
    text = record.config.get("disk_size")
    if not text:
        return None
    size = parse_size(text, what="disk size")
    if size > MAX_DISK_SIZE:
        raise SpecError(f"disk size {format_size(size)} is more than a root disk may have "
                        f"({format_size(MAX_DISK_SIZE)})", hint="give a smaller --disk, e.g. 20GiB")
    return size


def make_root_disk(
    record: InstanceRecord, image: ImageRecord, image_dir: Path, disk: Path, *, iso: bool
) -> bool:
    """Create the instance's root disk at `disk`; whether one was made (a diskless image has none)."""
    if disk.exists():
        raise ConflictError(f"{record.name} already has a root disk at {disk}")
    size = requested_size(record)
    if DISK in image.files:
        base = image_dir / image.files[DISK]
        if record.layers:  # a linked clone: over the nearest of its shared layers (docs/clones.md)
            from virtkit.storage.layers import layer_path, root_of

            base = layer_path(root_of(disk.parent), record.layers[0], record.kind)
        if size is not None and image.virtual_size and size < image.virtual_size:
            raise SpecError(
                f"disk size {format_size(size)} is smaller than image {image.name}'s "
                f"{format_size(image.virtual_size)}",
                hint="a root disk can grow, not shrink",
            )
        _qemu_img(
            ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(disk)],
            "linking the root disk",
        )
        if size is not None and size > image.virtual_size:
            try:
                _qemu_img(["resize", "-q", "-f", "qcow2", str(disk), str(size)], "growing the root disk")
            except BaseException:
                remove_quietly(disk)
                raise
        return True
    if iso:
        _qemu_img(
            ["create", "-q", "-f", "qcow2", str(disk), str(size or EMPTY_DISK_SIZE)], "making an empty disk"
        )
        return True
    return False


def _qemu_img(args: list[str], what: str) -> None:
    log.debug("qemu-img %s", " ".join(args))
    run_tool(["qemu-img", *args], timeout=QEMU_IMG_TIMEOUT, what=what, package="qemu-utils")
