"""The stored digest of a backup archive (format versions 3 and 4): the sha256 of its own bytes.

A version-3 checksum list carries ``stored``: the length and sha256 of the archive file up to the
compressor run that holds the list itself, so every byte of the archive but that last run is
covered by one digest, computed over the compressed bytes (a third of a disk's, here). It stands
where version 1 and 2 had a sha256 of every disk's and file's uncompressed content: hashing that
competed with the compressor for the CPU (2 cores: zstd's two threads and one sha256 over 1.5 GiB).
What it does not cover, the decompressed content, zstd's own frame checksum (`--check`, XXH64)
and gzip's CRC-32 do; trees keep their digests (they cover metadata too). The last run is guarded
by the list's own parse and the comparisons it feeds.

From version 4, a zstd archive's digest leaves out the run of each disk and file of at least
OWN_RUN bytes: the zstd that compressed it alone wrote one frame with its content checksum, which
the importer's zstd checks; the list names each such range (`skipped`), and the importer checks
that there is one for each big part and that a frame with a content checksum begins it. Hashing
those bytes again was the one thing an export did beside its compressor: on 2 cores it made the
export of a 2 GiB disk ~0.3 s slower (a 1.5 GiB file, 0.6 GiB stored), and it is one thread
where zstd uses every core.

The exporter hashes the archive as it grows (storage/backupwrite.py); an importer hashes the
file it reads in a thread of its own, beside decompression (`StoredHasher`), or, where ranges are
left out (it knows from the manifest, before any data), what is left once the list has been read.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Sequence

from virtkit.storage.backupformat import MAX_CHECKSUMS
from virtkit.units import KiB

CHUNK = 4 << 20
# How far before the file's end the last run may begin: the checksum list (at most MAX_CHECKSUMS)
# with its header, the tar end and a compressor's framing.
TAIL = MAX_CHECKSUMS + 64 * KiB


def hash_range(fd: int, digest: hashlib._Hash, start: int, end: int,
               stop: threading.Event | None = None) -> int:  # fmt: skip
    """`digest` updated with the bytes of `fd` from `start` to `end` (pread: the offset is left
    alone); where it stopped: `end`, less if the file was shorter or `stop` was set meanwhile."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    done = start
    while done < end and not (stop is not None and stop.is_set()):
        count = os.preadv(fd, [view[: min(CHUNK, end - done)]], done)
        if count == 0:
            break
        digest.update(view[:count])
        done += count
    return done


def segments(start: int, end: int, skipped: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """The ranges [a, b) of [start, end) outside every one of `skipped` (in order, apart)."""
    for low, high in skipped:
        if high <= start:
            continue
        if low >= end:
            break
        if low > start:
            yield start, low
        start = max(start, high)
    if start < end:
        yield start, end


class StoredHasher:
    """The sha256 of the start of the archive open at `fd` (`size` bytes), hashed in a thread up to
    TAIL before its end while it is read (unless `early` is False: ranges will be left out, and
    it is all hashed when known); `digest(length)` finishes it once the length is known."""

    def __init__(self, fd: int, size: int, early: bool = True) -> None:
        self.fd, self.size = fd, size
        self._digest = hashlib.sha256()
        self._early = max(0, size - TAIL) if early else 0
        self._done = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._early:  # nothing to hash before the length is known: no thread
            self._thread = threading.Thread(target=self._run, name="vk-import-stored", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._done = hash_range(self.fd, self._digest, 0, self._early, self._stop)
        except OSError:
            self._done = -1  # digest() says so

    def digest(self, length: int, skipped: Sequence[tuple[int, int]] = ()) -> str | None:
        """The sha256 of the first `length` bytes less the `skipped` ranges (in order, apart; none
        unless made with `early` False); None if `length` is not within TAIL of the end (no archive
        this virtkit writes), or the file could not be read."""
        if self._thread is not None:
            self._thread.join()
        if not self._early <= length <= self.size or self._done != self._early:
            return None
        if skipped and self._early:
            raise ValueError("ranges to leave out, but hashed from the start already")
        try:
            for low, high in segments(self._done, length, skipped):
                if hash_range(self.fd, self._digest, low, high) != high:
                    return None
        except OSError:
            return None
        return self._digest.hexdigest()

    def stop(self) -> None:
        """Stop hashing (the archive is refused anyway)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
