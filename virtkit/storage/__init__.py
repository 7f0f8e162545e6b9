"""Storage: safe extraction of untrusted archives (and, later, pools, volumes, snapshots).

`extract(source, dest)` unpacks a tar archive (plain, gzip, xz, bzip2 or zstd) without ever
writing through a symlink; `resolve_in_root` reads paths inside an unpacked root filesystem the
way a chroot would, never leaving it.
"""

from virtkit.storage.archive import ExtractStats, extract, remove_tree
from virtkit.storage.rootpath import open_in_root, read_in_root, resolve_in_root
from virtkit.storage.tarstream import Limits, sniff_compression

__all__ = [
    "ExtractStats",
    "Limits",
    "extract",
    "open_in_root",
    "read_in_root",
    "remove_tree",
    "resolve_in_root",
    "sniff_compression",
]
