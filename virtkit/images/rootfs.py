"""Import a root filesystem tarball (.tar, .tar.gz, .tar.xz, .tar.zst) as a system-container image.

The tarball is untrusted: it is unpacked by `virtkit.storage.extract` (no absolute paths, no
``..``, nothing written through a symlink, devices skipped, setuid stripped) with its numeric
owners kept, as a container's root filesystem needs root-owned files. The image runs its own init
(/sbin/init, else /bin/sh), so its container config is empty.
"""

from __future__ import annotations

import os
from pathlib import Path

from virtkit.errors import NotFoundError, RejectedError
from virtkit.images import rootinfo
from virtkit.images.staged import ROOTFS, Progress, StagedImage, no_progress
from virtkit.storage import extract, remove_tree

FORMAT = "rootfs-tar"


def import_rootfs(source: Path, staging: Path, *, name: str, progress: Progress = no_progress) -> StagedImage:
    """Unpack the rootfs tarball `source` into `staging`/rootfs and describe it.

    Raises NotFoundError for a missing source and RejectedError for anything refused, including a
    tarball without a single file; on failure nothing is left in `staging`.
    """
    source = Path(os.path.abspath(source))
    if not source.exists():
        raise NotFoundError(f"{source} does not exist")
    if source.is_dir():
        raise RejectedError(
            f"{source} is a directory: a root filesystem is imported from a tar archive",
            hint=f"make one with: tar -C {source} -czf rootfs.tar.gz .",
        )
    rootfs = staging / ROOTFS
    what = f"unpacking {source.name}"

    def report(done: int, total: int) -> None:
        progress(what, done / total if total else None)

    progress(what, 0.0)
    stats = extract(source, rootfs, owners=True, progress=report)
    if stats.files == 0:
        remove_tree(rootfs)
        raise RejectedError(
            f"archive {source.name} holds no files: it is not a root filesystem",
            hint="a rootfs tarball is made with: tar -C ROOTDIR -czf rootfs.tar.gz .",
        )
    progress(what, 1.0)
    properties = rootinfo.extraction_notes(stats, rootinfo.describe(rootfs))
    return StagedImage(
        name=name,
        kinds=["container"],
        arch=rootinfo.binary_arch(rootfs) or rootinfo.host_arch(),
        format=FORMAT,
        source=str(source),
        files={ROOTFS: ROOTFS},
        properties=properties,
        container={},
    )
