"""Importing a disk image (qcow2, raw, VMDK, VDI, VHD, VHDX) as a VM image: a checked qcow2 copy.

`import_disk` opens the file once (`source`), tells its format by its bytes (`detect`), reads the
headers that could point QEMU at other files (`headers`), asks `qemu-img info` and `check` under
resource limits (`diskinfo`), then converts it with `qemu-img convert -f FORMAT -O qcow2` — the
format always explicit, so QEMU never probes, and the source read through /dev/fd/N so it is the
file that was checked — and finally checks the output as it checked the input. The source must not
change during the import. On any failure the staging directory holds nothing from this call.

The output is qcow2 version 3 (compat=1.1), uncompressed, unpreallocated, zero blocks left
unallocated: the fastest to write and to run, and the format linked clones are made from.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from virtkit.errors import ConflictError, NotFoundError, RejectedError, ToolError
from virtkit.images.detect import Detected, classify, described, read_ends
from virtkit.images.diskinfo import DiskInfo, check_image, read_info
from virtkit.images.headers import inspect_headers
from virtkit.images.limits import Limits, run_limited
from virtkit.images.source import check_unchanged, fd_path, open_source
from virtkit.images.staged import DISK, Progress, StagedImage, no_progress
from virtkit.units import GiB, MiB, TiB

log = logging.getLogger(__name__)

OUTPUT = "disk.qcow2"
DEFAULT_MAX_VIRTUAL_SIZE = 2 * TiB
OUTPUT_OPTIONS = "compat=1.1,lazy_refcounts=off,extended_l2=off,preallocation=off"

# Bounds for `qemu-img convert`, scaled with the virtual size: generous upper limits (20 MiB/s of
# wall time, 50 MiB/s of CPU) that only a stuck or crafted conversion reaches.
_CONVERT_WALL = (300.0, 20 * MiB)
_CONVERT_CPU = (60, 50 * MiB)
_CONVERT_MEMORY = 2 * GiB
_PROGRESS = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")


def import_disk(
    source: Path,
    staging: Path,
    *,
    name: str,
    fmt: str | None = None,
    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE,
    arch: str = "x86_64",
    progress: Progress = no_progress,
) -> StagedImage:
    """Convert the disk image `source` into `staging/disk.qcow2` and describe it.

    `fmt` is the format the user gave (QEMU names, "vhd" accepted for vpc); without it the format
    is detected (see `detect`). Raises NotFoundError for a missing file, RejectedError for a file
    refused as unsafe, malformed or not a disk image, ToolError when qemu-img fails on good input,
    HostCapabilityError when qemu-img is not installed.
    """
    output = staging / OUTPUT
    _require_staging(staging, output)
    fd, before = open_source(source)
    try:
        detected = _detect(fd, before.st_size, source.name, fmt)
        progress(f"checking {source.name}", None)
        info, verdict = _inspect(fd, before.st_size, source.name, detected.format, max_virtual_size)
        try:
            _convert(fd, source.name, detected.format, output, info.virtual_size, progress)
            result = _verify_output(output, info, max_virtual_size)
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
        format=detected.format,
        source=f"imported: {source.name} ({detected.format})",
        files={DISK: OUTPUT},
        virtual_size=result.virtual_size,
        properties={
            "source_format": detected.format,
            "source_name": source.name,
            "source_size": str(before.st_size),
            "detected_by": detected.how,
            "check": verdict,
        },
    )


def _require_staging(staging: Path, output: Path) -> None:
    if not staging.is_dir():
        raise NotFoundError(f"staging directory {staging} does not exist")
    if output.exists() or output.is_symlink():
        raise ConflictError(f"staging directory {staging} already holds {OUTPUT}")


def _detect(fd: int, size: int, name: str, fmt: str | None) -> Detected:
    head, tail = read_ends(fd, size)
    detected = classify(name, head, tail, fmt)
    if detected.kind == "iso":
        raise RejectedError(
            f"{name} is an ISO 9660 image, not a disk image", hint="import it as install media (an ISO)"
        )
    if detected.kind != "disk":
        raise RejectedError(
            f"{name} is {described(detected.format)}, not a disk image",
            hint="import it as a root filesystem or container image",
        )
    return detected


def _inspect(fd: int, size: int, name: str, fmt: str, max_virtual_size: int) -> tuple[DiskInfo, str]:
    """Headers, then qemu-img info, then qemu-img check; returns the info and the check verdict."""
    inspect_headers(fd, fmt, size, name, max_virtual_size)
    filename = fd_path(fd)
    info = read_info(filename, fmt, name=name, max_virtual_size=max_virtual_size, pass_fds=(fd,))
    verdict = check_image(filename, fmt, name=name, virtual_size=info.virtual_size, pass_fds=(fd,))
    return info, verdict


def convert_limits(virtual_size: int) -> Limits:
    """Wall-clock, CPU and memory bounds for converting a disk of `virtual_size` bytes."""
    wall = _CONVERT_WALL[0] + virtual_size / _CONVERT_WALL[1]
    cpu = _CONVERT_CPU[0] + virtual_size // _CONVERT_CPU[1]
    return Limits(wall=wall, cpu=cpu, memory=_CONVERT_MEMORY)


def _convert(fd: int, name: str, fmt: str, output: Path, virtual_size: int, progress: Progress) -> None:
    what = f"converting {name} to qcow2"
    progress(what, 0.0)

    def on_line(line: str) -> None:
        match = _PROGRESS.search(line)
        if match:
            progress(what, min(1.0, float(match.group(1)) / 100))

    filename = fd_path(fd)
    argv = ["qemu-img", "convert", "-p", "-f", fmt, "-O", "qcow2", "-o", OUTPUT_OPTIONS]
    argv += [filename, str(output.absolute())]  # absolute: "a:b/x" would read as protocol "a"
    run_limited(
        argv,
        limits=convert_limits(virtual_size),
        what=what,
        pass_fds=(fd,),
        on_line=on_line,
        rename={filename: name},
    )


def _verify_output(output: Path, source: DiskInfo, max_virtual_size: int) -> DiskInfo:
    """The converted image must read as a clean, self-contained qcow2 of the source's size."""
    path = str(output.absolute())
    result = read_info(path, "qcow2", name=OUTPUT, max_virtual_size=max_virtual_size)
    check_image(path, "qcow2", name=OUTPUT, virtual_size=result.virtual_size)
    if result.virtual_size != source.virtual_size:
        raise ToolError(
            f"qemu-img convert made a disk of {result.virtual_size} bytes from one of "
            f"{source.virtual_size} bytes",
            hint="report this as a bug in virtkit",
        )
    return result
