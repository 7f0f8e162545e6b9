"""The compressed form of an image's tree in a backup, kept for the next export of any instance of
that image (an image never changes: its directory is its fingerprint's).

An export carries its instance's image (tens of MiB: a kernel, an initrd, a root filesystem) and
compressing it costs a third of a second for the tiny image — a fifth of exporting a 2 GiB disk.
The first export of an instance of an image compresses the image's tree in runs of its own (the
compressors' frames start and end with it) and keeps a copy of those bytes, with what the
archive's checksums say of them, under ROOT/cache/exports/: FINGERPRINT.COMPRESSION.frames and,
written last, .json. The next export copies them into its archive (copy_file_range) instead of
compressing again: the archive's bytes decompress to the very same tar members.

An entry is used only when its `stamp` matches the tree as walked now (every entry's tar header
and, for a file, its inode, size and change time) and the compressor's command line is the same;
anything else is a miss, and the tree is compressed as usual. Entries of images no longer here
are removed by `sweep`. Nothing here can make an export fail: a cache that cannot be read or
written is logged and ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from virtkit.storage.backuptree import Entry, xattrs_of
from virtkit.store.files import temp_name

log = logging.getLogger(__name__)

FORMAT = 1
FRAMES, META = ".frames", ".json"


@dataclass(frozen=True)
class Hit:
    """A cached tree: `fd` (open, read from offset 0) holds `length` compressed bytes that
    decompress to `size` bytes of tar members; `digest`, `entries` and `content`: what
    ArchiveWriter.add_tree records and returns for them."""

    fd: int
    length: int
    size: int
    digest: str
    entries: int
    content: int


class TreeCache:
    """The cache entry of one image (`key`: its fingerprint) in `directory`."""

    def __init__(self, directory: Path, key: str) -> None:
        self.directory, self.key = directory, key

    def _paths(self, compression: str) -> tuple[Path, Path]:
        base = self.directory / f"{self.key}.{compression}"
        return base.with_name(base.name + FRAMES), base.with_name(base.name + META)

    @staticmethod
    def stamp(entries: list[Entry], argv: list[str]) -> str:
        """What the cached bytes were made from: the compressor and every entry as it is now."""
        digest = hashlib.sha256(json.dumps([FORMAT, argv]).encode())
        for entry in entries:
            info = entry.info
            fields: list[object] = [info.name, info.type.decode(), info.mode, info.uid, info.gid,
                                    info.size, int(info.mtime), info.linkname,
                                    sorted(xattrs_of(info).items())]  # fmt: skip
            if entry.path is not None:
                found = os.lstat(entry.path)
                fields += [found.st_dev, found.st_ino, found.st_size, found.st_ctime_ns, found.st_mtime_ns]
            digest.update(json.dumps(fields, default=repr).encode() + b"\n")
        return digest.hexdigest()

    def load(self, compression: str, stamp: str) -> Hit | None:
        """The cached bytes made from `stamp`, or None."""
        frames, meta = self._paths(compression)
        try:
            document = json.loads(meta.read_bytes()[:65536])
            if not isinstance(document, dict) or document.get("stamp") != stamp:
                return None
            fd = os.open(frames, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, ValueError):
            return None
        try:
            length = int(document["length"])
            if os.fstat(fd).st_size != length:
                raise ValueError("truncated")
            return Hit(fd, length, int(document["size"]), str(document["digest"]), int(document["entries"]),
                       int(document["content"]))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the export cache %s: %s", frames, exc)
            os.close(fd)
            return None

    def store(self, compression: str, stamp: str, archive: Path, start: int, length: int, size: int,
              digest: str, entries: int, content: int) -> None:  # fmt: skip
        """Keep bytes [start, start+length) of the archive being written at `archive`."""
        frames, meta = self._paths(compression)
        temp = frames.with_name(temp_name(frames.name))
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            for stale in (meta, frames):  # the metadata goes first: never a pair that does not match
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
            source = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    offset, left = start, length
                    while left > 0:
                        copied = os.copy_file_range(source, out, left, offset)
                        if copied == 0:
                            raise OSError("the archive is shorter than expected")
                        offset, left = offset + copied, left - copied
                    os.fsync(out)
                finally:
                    os.close(out)
            finally:
                os.close(source)
            os.rename(temp, frames)
            document = {"format": FORMAT, "stamp": stamp, "length": length, "size": size, "digest": digest,
                        "entries": entries, "content": content}  # fmt: skip
            temp_meta = meta.with_name(temp_name(meta.name))
            temp_meta.write_text(json.dumps(document))
            os.chmod(temp_meta, 0o600)
            os.rename(temp_meta, meta)
        except OSError as exc:
            log.warning("cannot keep the compressed image for the next export in %s: %s", self.directory, exc)
            with contextlib.suppress(OSError):
                temp.unlink()


def sweep(directory: Path, keep: set[str]) -> None:
    """Remove the cache entries of images whose fingerprint is not in `keep`, and what killed
    exports left (temporary files whose process is gone)."""
    from virtkit.storage.snapshots import sweep as sweep_temps

    sweep_temps(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith(".") and name.split(".", 1)[0] not in keep:
            with contextlib.suppress(OSError):
                os.unlink(directory / name)
