"""What a builder or importer hands to the image store: a directory of files plus their metadata.

Builders (tiny, debian) and importers (disks, ISOs, rootfs tarballs, OCI archives) write into a
staging directory the image store gives them, and describe the result with a `StagedImage`. The
store then fingerprints the files, moves the directory into place and records it, all or nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The roles a file can play in an image, and the name it has inside the image directory.
DISK = "disk"  # qcow2 root disk (VMs)
KERNEL = "kernel"  # kernel for direct boot (VMs)
INITRD = "initrd"  # initramfs for direct boot (VMs)
ROOTFS = "rootfs"  # unpacked root filesystem directory (containers; overlay lower layer)
ISO = "iso"  # install media, kept as-is
ROLES = (DISK, KERNEL, INITRD, ROOTFS, ISO)

# Progress callback: (what is happening, fraction done 0..1 or None when unknown).
Progress = Callable[[str, float | None], None]


def no_progress(_what: str, _fraction: float | None) -> None:
    """A Progress that shows nothing (library use, --json)."""


@dataclass
class StagedImage:
    """An image ready to be committed to the store.

    `files` maps a role (DISK, KERNEL, ...) to a path relative to the staging directory; a ROOTFS
    entry names a directory. `kinds` says what the image can run as ("vm", "container").
    `container` holds an application image's OCI config: entrypoint, cmd, env, workdir, user.
    """

    name: str
    kinds: list[str]
    arch: str
    format: str
    source: str
    files: dict[str, str] = field(default_factory=dict)
    virtual_size: int = 0
    properties: dict[str, str] = field(default_factory=dict)
    container: dict[str, Any] = field(default_factory=dict)

    def path_of(self, staging: Path, role: str) -> Path:
        return staging / self.files[role]
