"""Writing a backup archive: one pass, checksums computed as the bytes go out.

The tar stream is written here (headers by `tarfile.TarInfo.tobuf`, pax format: long names, big
sizes, extended attributes). Compression is the `zstd` or `gzip` binary, and the archive is a
sequence of their frames (both formats read concatenated frames as one stream):

- what is small (headers, the manifest, trees' files, small disks) goes through a compressor's
  pipe, one process per run of such data;
- a big file (a disk, a kernel) is compressed by a compressor of its own reading the file itself
  — no pipe (a pipe costs zstd a third of its speed here), the same flags as `zstd` by hand;
  uncompressed, it is copied in the kernel (copy_file_range).

A thread follows the archive as it grows (`_Follower`): it hashes its bytes for the stored digest
(storage/backupstored.py: the compressed bytes, not each disk's content; in a zstd archive, not
the runs of big disks and files, which their frame's checksum covers) and hands its pages to
the disk (sync_file_range, every `FLUSH_STEP`), so the final fsync waits for little and writing
overlaps compressing. A tree's files are hashed as they go (its digest covers their content): a
big one by a second thread from the page cache, beside its compressor.

The archive is written under a hidden temporary name beside its destination and renamed into place
only when complete and synced: an interrupted export never leaves a plausible but truncated archive.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from virtkit import procs
from virtkit.errors import ConflictError, StoreError, ToolError
from virtkit.images.tools import missing_tool
from virtkit.storage.backupcache import TreeCache
from virtkit.storage.backupformat import CHECKSUMS, MANIFEST, OWN_RUN, TREES
from virtkit.storage.backupstored import hash_range, segments
from virtkit.storage.backuptree import Entry, tarinfo_line
from virtkit.store.files import temp_name

log = logging.getLogger(__name__)

COMPRESSORS = {
    "zstd": (["zstd", "-q", "-c", "-3", "-T0"], "zstd"),  # with its frames' content checksum
    "gzip": (["gzip", "-c", "-6"], "gzip"),
}
COMPRESSIONS = ("zstd", "gzip", "none")
CHUNK = 4 << 20
BIG = OWN_RUN  # files from this size get a compressor of their own (a spawn costs ~2 ms)
PIPE_SIZE = 1 << 20
RECORD = tarfile.RECORDSIZE
FINISH_TIMEOUT = 3600.0  # a compressor's run over one file
FLUSH_STEP = 32 << 20  # written bytes handed to the disk at a time
FLUSH_EVERY = 0.05  # seconds between looks at how much was written


class ArchiveWriter:
    """The archive being written to `dest` (refused if it exists) with `compression`."""

    def __init__(self, dest: Path, compression: str) -> None:
        self.dest = Path(os.path.abspath(dest))
        if os.path.lexists(self.dest):
            raise ConflictError(f"{self.dest} already exists", hint="choose another file name or remove it")
        if not self.dest.parent.is_dir():
            raise StoreError(f"cannot write {self.dest}: {self.dest.parent} is not a directory")
        self.partial = self.dest.with_name(temp_name(self.dest.name))
        self.position = 0
        self.sums: dict[str, dict[str, str]] = {TREES: {}}
        self.manifest_sum = ""
        self.compression = compression
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="vk-export-hash")
        self._proc: subprocess.Popen[bytes] | None = None  # the compressor of the current run
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close/abort)
        # read and write: the follower reads back what the compressors wrote (the stored digest)
        self._fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._sink = self._fd if compression == "none" else -1
        self._follower = _Follower(self._fd)

    # --- compressors --------------------------------------------------------------------------------

    def _spawn(self, stdin: int) -> subprocess.Popen[bytes]:
        argv, package = COMPRESSORS[self.compression]
        try:
            return subprocess.Popen(argv, stdin=stdin, stdout=self._fd, stderr=self._stderr)
        except FileNotFoundError:
            raise missing_tool(argv[0], package) from None

    def _begin_run(self) -> None:
        self._proc = self._spawn(subprocess.PIPE)
        assert self._proc.stdin is not None
        self._sink = self._proc.stdin.fileno()
        with contextlib.suppress(OSError):  # fewer, larger writes; the default (64 KiB) works too
            fcntl.fcntl(self._sink, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def _end_run(self) -> None:
        """Let the current compressor finish its frames (the output's offset is then at their end)."""
        if self._proc is None:
            return
        proc, self._proc, self._sink = self._proc, None, -1
        assert proc.stdin is not None
        proc.stdin.close()
        self._wait(proc)

    def _wait(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            code = procs.wait(proc, FINISH_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise self._failed(f"it did not finish within {FINISH_TIMEOUT:g} s") from None
        if code != 0:
            raise self._failed(f"exit status {code}")

    # --- the stream -------------------------------------------------------------------------------

    def _out(self, data: bytes | memoryview) -> None:
        if self._sink < 0:
            self._begin_run()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._sink, view) :]
        except BrokenPipeError:
            raise self._failed("it stopped reading") from None
        self.position += len(data)

    def _header(self, info: tarfile.TarInfo) -> None:
        self._out(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self, size: int) -> None:
        rest = size % tarfile.BLOCKSIZE
        if rest:
            self._out(bytes(tarfile.BLOCKSIZE - rest))

    def _copy(self, fd: int, size: int, digest: hashlib._Hash | None, what: str, head: bytes = b"") -> None:
        """`size` bytes of `fd` from its start (the first ones replaced by `head`) into the stream,
        hashed on the way into `digest` if one is given: each chunk by a second thread while this
        one writes it (both release the GIL), so hashing and compressing run side by side."""
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        done = 0
        while done < size:
            count = os.preadv(fd, [view[: min(CHUNK, size - done)]], done)
            if count == 0:
                raise StoreError(f"{what} shrank while it was being exported", hint="export it again")
            if done < len(head):
                start = min(len(head) - done, count)
                view[:start] = head[done : done + start]
            hashed = self._hasher.submit(digest.update, view[:count]) if digest is not None else None
            try:
                self._out(view[:count])
            finally:
                if hashed is not None:
                    hashed.result()
            done += count
        self._pad(size)

    def _copy_big(self, fd: int, size: int, digest: hashlib._Hash | None, what: str, head: bytes,
                  skip: bool = False) -> None:  # fmt: skip
        """As `_copy`, for a big file: after `head` (written through the stream), the rest of the
        file goes to a compressor reading it itself (or is copied by the kernel), hashed meanwhile
        into `digest` if one is given. With `skip` in a zstd archive, that run is left out of the
        stored digest (its frame's content checksum covers it)."""
        self._out(head)
        self._end_run()
        hashed = self._hasher.submit(_hash_file, fd, size, digest, head) if digest is not None else None
        skip = skip and self.compression == "zstd"
        start = os.lseek(self._fd, 0, os.SEEK_CUR)
        if skip:
            self._follower.hold(start)
        try:
            os.lseek(fd, len(head), os.SEEK_SET)
            if self.compression == "none":
                _copy_range(fd, self._fd, size - len(head))
            else:
                self._wait(self._spawn(fd))
            if os.lseek(fd, 0, os.SEEK_CUR) != size:  # the compressor shares this offset
                raise StoreError(f"{what} changed size while it was being exported", hint="export it again")
        finally:
            if hashed is not None:
                hashed.result()
        if skip:
            self._follower.skip(start, os.lseek(self._fd, 0, os.SEEK_CUR))
        self.position += size - len(head)
        self._pad(size)

    def add_bytes(self, name: str, data: bytes) -> str:
        """A small regular member; its sha256."""
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        self._header(info)
        self._out(data)
        self._pad(len(data))
        return hashlib.sha256(data).hexdigest()

    def add_manifest(self, document: dict[str, object]) -> None:
        self.manifest_sum = self.add_bytes(MANIFEST, json.dumps(document, indent=1).encode())

    def add_file(self, kind: str, part: str, fd: int, size: int, head: bytes = b"") -> None:
        """The open file `fd` (`size` bytes; its start replaced by `head`) as member KIND/PART
        (covered by the stored digest, or from BIG by its zstd frame's checksum: not hashed on its
        own)."""
        info = tarfile.TarInfo(f"{kind}/{part}")
        info.size, info.mode, info.mtime = size, 0o600, int(time.time())
        self._header(info)
        if size >= BIG and len(head) < size:
            self._copy_big(fd, size, None, part, head, skip=True)
        else:
            self._copy(fd, size, None, part, head)

    def add_tree(self, part: str, entries: Iterable[Entry],
                 cache: TreeCache | None = None) -> tuple[int, int]:  # fmt: skip
        """A directory tree as members under trees/PART/; (entries, content bytes). With `cache`
        (an image's: storage/backupcache.py), its compressed bytes are copied from there when they
        were kept for the tree as it is, else compressed in runs of their own and kept."""
        if cache is None or self.compression == "none":
            return self._add_tree(part, entries)
        listed = list(entries)
        argv = COMPRESSORS[self.compression][0]
        stamp = cache.stamp(listed, argv)
        self._end_run()
        hit = cache.load(self.compression, stamp)
        if hit is not None:
            try:
                _copy_range(hit.fd, self._fd, hit.length)
            finally:
                os.close(hit.fd)
            self.position += hit.size
            self.sums[TREES][part] = hit.digest
            return hit.entries, hit.content
        start, position = os.lseek(self._fd, 0, os.SEEK_CUR), self.position
        count, total = self._add_tree(part, listed)
        self._end_run()
        end = os.lseek(self._fd, 0, os.SEEK_CUR)
        cache.store(self.compression, stamp, self.partial, start, end - start, self.position - position,
                    self.sums[TREES][part], count, total)  # fmt: skip
        return count, total

    def _add_tree(self, part: str, entries: Iterable[Entry]) -> tuple[int, int]:
        tree = hashlib.sha256()
        count = total = 0
        prefix = f"{TREES}/{part}"
        for entry in entries:
            info = entry.info
            relative = "" if info.name == "." else info.name
            link = info.linkname
            info.name = f"{prefix}/{relative}" if relative else prefix
            if info.type == tarfile.LNKTYPE:
                info.linkname = f"{prefix}/{link}"
            content = ""
            if info.type == tarfile.REGTYPE:
                content = self._tree_file(entry, info)
                total += info.size
            else:
                info.size = 0
                self._header(info)
            tree.update(tarinfo_line(info, relative, link, content))
            count += 1
        self.sums[TREES][part] = tree.hexdigest()
        return count, total

    def _tree_file(self, entry: Entry, info: tarfile.TarInfo) -> str:
        assert entry.path is not None
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            if os.fstat(fd).st_size != info.size:
                raise StoreError(f"{entry.path} changed while it was being exported", hint="export it again")
            digest = hashlib.sha256()
            self._header(info)
            if info.size >= BIG:
                self._copy_big(fd, info.size, digest, str(entry.path), b"")
            else:
                self._copy(fd, info.size, digest, str(entry.path))
            return digest.hexdigest()
        finally:
            os.close(fd)

    # --- the end ----------------------------------------------------------------------------------

    def close(self) -> Path:
        """Write the checksums and the end of the archive, finish compressing, sync, rename into
        place; the archive's path."""
        try:
            self._end_run()
            length = os.lseek(self._fd, 0, os.SEEK_CUR)  # where the checksums' run begins
            stored = {"bytes": length, "sha256": self._follower.digest(length),
                      "skipped": [list(run) for run in self._follower.skipped]}  # fmt: skip
            document = {"manifest": self.manifest_sum, **self.sums, "stored": stored}
            self.add_bytes(CHECKSUMS, json.dumps(document, indent=1, sort_keys=True).encode())
            end = self.position + 2 * tarfile.BLOCKSIZE
            self._out(bytes(end - self.position + (-end) % RECORD))
            self._end_run()
            self._follower.stop()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.rename(self.partial, self.dest)
        except BaseException:
            self.abort()
            raise
        self._release()
        return self.dest

    def _failed(self, why: str) -> ToolError:
        self._stderr.seek(0)
        said = self._stderr.read(4096).decode(errors="replace").strip()
        argv = COMPRESSORS.get(self.compression, ([], ""))[0]
        return ToolError(f"compressing {self.dest.name} failed: {argv[0] if argv else '?'}: {why}",
                         argv=list(argv), stderr=said)  # fmt: skip

    def abort(self) -> None:
        """Stop the compressor and remove the partial archive."""
        self._follower.stop()
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial)
        self._release()

    def _release(self) -> None:
        self._hasher.shutdown(wait=True)
        self._stderr.close()


def _hash_file(fd: int, size: int, digest: hashlib._Hash, head: bytes) -> hashlib._Hash:
    """`digest` updated with `head` then the bytes of `fd` after it, up to `size` (pread: the
    file's offset is the compressor's); `digest`."""
    digest.update(head)
    if hash_range(fd, digest, len(head), size) != size:
        raise StoreError("a file shrank while it was being exported", hint="export it again")
    return digest


class _Follower:
    """A thread following the archive `fd` as it grows, every FLUSH_EVERY: it hashes the new bytes
    (read back from the page cache) for the stored digest, but for the ranges it is told to leave
    out (`hold`, `skip`), and starts their writeback (sync_file_range SYNC_FILE_RANGE_WRITE:
    asynchronous, nothing waited for) every FLUSH_STEP bytes. Writeback is skipped where the
    call is missing or fails (the final fsync is what counts); `digest` hashes whatever the thread
    had not yet."""

    def __init__(self, fd: int) -> None:
        self.fd, self.hashed, self.flushed = fd, 0, 0  # hashed: all before it hashed or left out
        self.skipped: list[tuple[int, int]] = []
        self._held: int | None = None  # nothing from here is hashed until `skip` says how far
        self._lock = threading.Lock()
        self._broken = False  # a read failed midway: the digest cannot be trusted
        self._digest = hashlib.sha256()
        self._stop = threading.Event()
        self._call = _sync_file_range()
        self._thread: threading.Thread | None = threading.Thread(target=self._run, name="vk-export-follow",
                                                                 daemon=True)  # fmt: skip
        self._thread.start()

    def hold(self, start: int) -> None:
        """A run the digest leaves out begins at `start`: hash nothing from there for now."""
        with self._lock:
            self._held = start

    def skip(self, start: int, end: int) -> None:
        """The run from `start` (held) ends at `end`: left out, hashing goes on after it."""
        with self._lock:
            self.skipped.append((start, end))
            self._held = None

    def _hash_to(self, end: int, stop: threading.Event | None) -> int:
        """Hash from `hashed` towards `end` but for what is held or left out; how far it got."""
        with self._lock:
            held, skipped = self._held, list(self.skipped)
        end = end if held is None else min(end, held)
        for low, high in segments(self.hashed, end, skipped):
            done = hash_range(self.fd, self._digest, low, high, stop)
            if done != high:
                self.hashed = done
                return done
        self.hashed = max(self.hashed, end)
        return self.hashed

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_EVERY):
            try:
                size = os.fstat(self.fd).st_size
                self._hash_to(size, self._stop)
                if self._call is not None and size - self.flushed >= FLUSH_STEP:
                    if self._call(self.fd, self.flushed, size - self.flushed, _SYNC_FILE_RANGE_WRITE) != 0:
                        self._call = None
                    self.flushed = size
            except OSError:
                self._broken = True
                return

    def digest(self, length: int) -> str:
        """The sha256 of the archive's first `length` bytes (all it holds yet); the thread stops."""
        self.stop()
        if self._broken:
            raise StoreError("cannot read back the archive being written", hint="export it again")
        try:
            done = self._hash_to(length, None)
        except OSError as exc:
            raise StoreError(f"cannot read back the archive being written: {exc.strerror}") from None
        if done != length:
            raise StoreError("the archive being written is shorter than what was written to it")
        return self._digest.hexdigest()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, or None."""
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


def _copy_range(source: int, dest: int, count: int) -> None:
    while count > 0:
        copied = os.copy_file_range(source, dest, min(count, 1 << 30))
        if copied == 0:
            raise StoreError("a file shrank while it was being exported", hint="export it again")
        count -= copied
