"""Import of virtkit's own image archives (`virtkit image export`), treated as untrusted like any other.

The archive is unpacked with the safe extractor; its metadata is validated; a disk goes through the
same checks and conversion as any imported disk (a qcow2 inside could name a backing file), an ISO
through the ISO checks. The fingerprint is computed anew from what was unpacked, never taken from
the metadata.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from pydantic import ValidationError

from virtkit.errors import RejectedError, VirtkitError
from virtkit.images.export import METADATA
from virtkit.images.staged import DISK, ISO, ROLES, ROOTFS, Progress, StagedImage, no_progress
from virtkit.model import ImageRecord
from virtkit.storage import extract, remove_tree
from virtkit.storage.tarstream import Limits, TarStream

UNPACK = ".bundle"


def is_bundle(source: Path) -> bool:
    """Whether `source` is a tar archive whose first member is virtkit's image metadata."""
    if not source.is_file():
        return False
    try:
        with (
            TarStream(source, source.name, Limits()) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            first = tar.next()
    except (VirtkitError, tarfile.TarError, OSError, ValueError):
        return False
    return first is not None and first.name.removeprefix("./") == METADATA


def import_bundle(
    source: Path, staging: Path, *, name: str | None, progress: Progress = no_progress
) -> StagedImage:
    """Unpack and check a virtkit image archive into `staging`."""
    unpack = staging / UNPACK
    try:
        progress(f"unpacking {source.name}", 0.0)
        extract(source, unpack, owners=True)
        record = _metadata(unpack, source.name)
        files = _move_files(record, unpack, staging, source.name, progress)
    finally:
        if unpack.exists():
            remove_tree(unpack)
    return StagedImage(
        name=name or record.name,
        kinds=[kind.value for kind in record.kinds],
        arch=record.arch,
        format=record.format,
        source=f"imported: {source.name} (virtkit image archive)",
        files=files,
        virtual_size=record.virtual_size,
        properties=dict(record.properties),
        container=dict(record.container),
    )


def _metadata(unpack: Path, label: str) -> ImageRecord:
    try:
        document = json.loads((unpack / METADATA).read_bytes()[: 1024 * 1024])
        return ImageRecord.model_validate(document)
    except (OSError, ValueError, ValidationError, VirtkitError) as exc:
        raise RejectedError(f"{label}: its {METADATA} is not valid virtkit image metadata") from exc


def _move_files(
    record: ImageRecord, unpack: Path, staging: Path, label: str, progress: Progress
) -> dict[str, str]:
    from virtkit.images.disk import import_disk
    from virtkit.images.iso import import_iso

    files: dict[str, str] = {}
    for role, relative in record.files.items():
        if role not in ROLES or Path(relative).name != relative or relative in ("", ".", "..", UNPACK):
            raise RejectedError(f"{label}: file entry {role}={relative!r} is not allowed")
        path = unpack / relative
        if role == DISK:
            staged = import_disk(path, staging, name=record.name, fmt="qcow2", progress=progress)
            files[DISK] = staged.files[DISK]
        elif role == ISO:
            staged = import_iso(path, staging, name=record.name, progress=progress)
            files[ISO] = staged.files[ISO]
        else:
            expect_dir = role == ROOTFS
            if os.path.islink(path) or not (path.is_dir() if expect_dir else path.is_file()):
                raise RejectedError(f"{label}: its {role} {relative!r} is missing or of the wrong type")
            if (staging / relative).exists():
                raise RejectedError(f"{label}: two of its files are both named {relative!r}")
            os.rename(path, staging / relative)
            files[role] = relative
    return files
