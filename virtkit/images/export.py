"""`virtkit image export`: one image as a portable tar archive (metadata first, then its files).

The archive holds `virtkit-image.json` (the image's record) followed by the image directory's files
under their names in the image (`disk.qcow2`, `vmlinuz`, `rootfs/...`), numeric owners kept. It is
written beside the destination and renamed into place when complete: an interrupted export never
leaves a plausible-looking but truncated archive.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from virtkit.errors import ConflictError, StoreError
from virtkit.images.staged import Progress, no_progress
from virtkit.images.store import ImageStore, disk_usage
from virtkit.model import ImageRecord

METADATA = "virtkit-image.json"


def export_image(
    images: ImageStore, record: ImageRecord, dest: Path, *, progress: Progress = no_progress
) -> Path:
    """Write `record`'s image to the tar archive `dest` (refused if `dest` exists)."""
    dest = Path(os.path.abspath(dest))
    if dest.exists() or dest.is_symlink():
        raise ConflictError(f"{dest} already exists", hint="choose another file name or remove it")
    if not dest.parent.is_dir():
        raise StoreError(f"cannot write {dest}: {dest.parent} is not a directory")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    total = max(1, disk_usage(images.path(record)))
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
            metadata = json.dumps(record.model_dump(mode="json"), indent=2).encode()
            info = tarfile.TarInfo(METADATA)
            info.size, info.mode, info.mtime = len(metadata), 0o644, int(record.created_at)
            archive.addfile(info, io.BytesIO(metadata))
            done = 0
            for role in sorted(record.files):
                path = images.file(record, role)
                progress(f"exporting {role}", done / total)
                archive.add(path, arcname=record.files[role], recursive=True)
                done += disk_usage(path)
        os.replace(partial, dest)
    except OSError as exc:
        raise StoreError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    finally:
        if partial.exists():
            partial.unlink()
    progress("exported", 1.0)
    return dest
