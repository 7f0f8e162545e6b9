"""Importing ISO 9660 install media, kept byte for byte (for `launch --iso`).

The file must be an ISO 9660 image by its bytes ("CD001" volume descriptors from sector 16, a
primary volume descriptor, a terminator) and at least as long as its primary volume descriptor
says (so a truncated download is refused). It is copied as `install.iso` the cheapest way the
filesystems allow — a reflink (FICLONE, as `cp --reflink=auto`), else in-kernel copy_file_range,
else sendfile — from the descriptor that was checked. The volume id and whether it is bootable
(El Torito) go into the image's properties.

`check_boot_media` is the same check for a file given at launch (`--iso FILE`), which is used in
place rather than imported, and must also be bootable: an ISO without an El Torito boot record is
nothing BIOS or UEFI firmware can start.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import ConflictError, NotFoundError, RejectedError, SpecError
from virtkit.images.detect import NAMES, classify, printable, read_ends, sniff
from virtkit.images.source import check_unchanged, open_source
from virtkit.images.staged import ISO, Progress, StagedImage, no_progress
from virtkit.units import GiB, MiB, format_size

OUTPUT = "install.iso"
DEFAULT_MAX_SIZE = 64 * GiB  # a dual-layer Blu-ray is 50 GB; install media are far smaller
SECTOR = 2048
FIRST_DESCRIPTOR = 16
MAX_DESCRIPTORS = 64
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_CHUNK = 64 * MiB
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


@dataclass(frozen=True)
class Volume:
    """What an ISO 9660 primary volume descriptor says."""

    volume_id: str
    size: int  # volume space size x logical block size
    el_torito: bool


def import_iso(
    source: Path,
    staging: Path,
    *,
    name: str,
    arch: str = "x86_64",
    max_size: int = DEFAULT_MAX_SIZE,
    progress: Progress = no_progress,
) -> StagedImage:
    """Check that `source` is a whole ISO 9660 image and copy it to `staging/install.iso`.

    Raises NotFoundError for a missing file and RejectedError for anything that is not a whole ISO
    9660 image of at most `max_size` bytes.
    """
    output = staging / OUTPUT
    if not staging.is_dir():
        raise NotFoundError(f"staging directory {staging} does not exist")
    if output.exists() or output.is_symlink():
        raise ConflictError(f"staging directory {staging} already holds {OUTPUT}")
    fd, before = open_source(source)
    try:
        head, tail = read_ends(fd, before.st_size)
        detected = classify(source.name, head, tail)
        if detected.format != "iso":
            raise RejectedError(
                f"{source.name} is not an ISO 9660 image (it looks like: {NAMES[detected.format]})"
            )
        volume = read_volume(fd, before.st_size, source.name, max_size)
        try:
            copy_file(fd, output, before.st_size, lambda done: progress(f"copying {source.name}", done))
            check_unchanged(fd, before, source.name)
        except BaseException:
            output.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)
    progress(f"imported {source.name}", 1.0)
    return StagedImage(
        name=name,
        kinds=["vm"],
        arch=arch,
        format="iso",
        source=f"imported: {source.name} (iso)",
        files={ISO: OUTPUT},
        virtual_size=before.st_size,
        properties={
            "source_format": "iso",
            "source_name": source.name,
            "volume_id": volume.volume_id,
            "el_torito": "yes" if volume.el_torito else "no",
        },
    )


def check_boot_media(path: Path) -> Volume:
    """The volume of the bootable install media at `path`, checked as an import checks an ISO.

    SpecError (the request names a wrong file) when `path` is missing, a directory or another
    non-regular file, not a whole ISO 9660 image, or one without an El Torito boot record.
    """
    media = "give bootable install media (an ISO 9660 file)"
    if path.is_dir():
        raise SpecError(f"ISO {path} is a directory, not an ISO file", hint=media)
    try:
        fd, before = open_source(path)
    except NotFoundError:
        raise SpecError(f"ISO {path} does not exist", hint=media) from None
    except RejectedError as exc:
        raise SpecError(exc.message, hint=media) from None
    try:
        head, tail = read_ends(fd, before.st_size)
        found = sniff(head, tail)
        if found != "iso":
            looks = f" (it looks like: {NAMES[found]})" if found else ""
            raise SpecError(f"{path} is not an ISO 9660 image{looks}", hint=media)
        try:
            volume = read_volume(fd, before.st_size, str(path))
        except RejectedError as exc:
            raise SpecError(exc.message, hint=exc.hint or media) from None
    finally:
        os.close(fd)
    if not volume.el_torito:
        raise SpecError(
            f"{path} has no El Torito boot record: firmware cannot boot it",
            hint="give bootable install media (a data CD is not one)",
        )
    return volume


def read_volume(fd: int, size: int, name: str, max_size: int = DEFAULT_MAX_SIZE) -> Volume:
    """Walk the volume descriptor set; RejectedError when it is malformed or the file too short."""
    if size > max_size:
        raise RejectedError(
            f"{name} is {format_size(size)}, above the limit of {format_size(max_size)} for ISO images"
        )
    primary: bytes | None = None
    el_torito = False
    for index in range(FIRST_DESCRIPTOR, FIRST_DESCRIPTOR + MAX_DESCRIPTORS):
        descriptor = os.pread(fd, SECTOR, index * SECTOR)
        if len(descriptor) < SECTOR or descriptor[1:6] != b"CD001":
            raise RejectedError(f"{name} is truncated or malformed: volume descriptor {index} is missing")
        kind = descriptor[0]
        if kind == 255:
            break
        el_torito |= kind == 0 and descriptor[7:30] == b"EL TORITO SPECIFICATION"
        if kind == 1 and primary is None:
            primary = descriptor
    else:
        raise RejectedError(f"{name} is malformed: no end to its volume descriptors")
    if primary is None:
        raise RejectedError(f"{name} is malformed: it has no primary volume descriptor")
    blocks = struct.unpack("<I", primary[80:84])[0]
    block_size = struct.unpack("<H", primary[128:130])[0]
    if block_size not in (512, 1024, 2048):
        raise RejectedError(f"{name} is malformed: logical block size {block_size}")
    declared = blocks * block_size
    if declared > size:
        raise RejectedError(
            f"{name} is truncated: its volume is {declared} bytes but the file has {size}",
            hint="download or copy it again",
        )
    volume_id = printable(primary[40:72].decode("ascii", errors="replace").strip())
    return Volume(volume_id, declared, el_torito)


def copy_file(fd: int, output: Path, size: int, progress: Callable[[float], None] | None = None) -> None:
    """Copy `size` bytes of open file `fd` to a new file `output` (a reflink when possible)."""
    out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.ioctl(out, FICLONE, fd)
        except OSError:  # not a reflinking filesystem, or across filesystems: copy
            _copy_bytes(fd, out, size, progress)
        os.fsync(out)
    finally:
        os.close(out)


def _copy_bytes(fd: int, out: int, size: int, progress: Callable[[float], None] | None) -> None:
    copied = 0
    in_kernel = True
    while copied < size:
        count = min(_CHUNK, size - copied)
        done = 0
        if in_kernel:
            try:
                done = os.copy_file_range(fd, out, count, copied)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                in_kernel = False
        if not in_kernel:
            done = os.sendfile(out, fd, copied, count)
        if done == 0:
            raise RejectedError("the file shrank while being copied", hint="import a copy nothing writes to")
        copied += done
        if progress is not None:
            progress(copied / size)
