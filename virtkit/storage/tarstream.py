"""An untrusted archive file as a bounded stream of uncompressed tar bytes.

Compression is found by magic bytes, never by file name: gzip, xz and bzip2 are read with the
standard library, zstd through the `zstd -dc` binary (Python 3.11 has no zstd module). Anything
else is handed to tarfile as plain tar, which refuses what is not one.

The stream enforces the limits that protect the host while reading: total uncompressed bytes, a
compression-ratio guard against decompression bombs, and a *fence* that bounds how far tarfile
may read past the current member (tarfile holds a GNU long name or a pax header in memory whole).
It also remembers where the last non-zero byte was, so the extractor can tell a complete archive
(ending in zero blocks) from a truncated one or one with data after its end.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import stat
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from virtkit import procs
from virtkit.errors import NotFoundError, RejectedError, ToolError
from virtkit.units import GiB, MiB, format_size

GZIP, XZ, ZSTD, BZIP2, NONE = "gzip", "xz", "zstd", "bzip2", "none"
_MAGIC = ((b"\x1f\x8b", GZIP), (b"\xfd7zXZ\x00", XZ), (b"\x28\xb5\x2f\xfd", ZSTD), (b"BZh", BZIP2))
# How long zstd may take to exit once its output has been read to the end.
ZSTD_TIMEOUT = 60.0
# What tarfile may read beyond the current member before the next one: room for a long name, a pax
# header with xattrs, and read-ahead. Far more than any real header; far less than memory.
HEADER_BUDGET = 1 * MiB
_PROGRESS_STEP = 1 * MiB

# (compressed bytes read, compressed size of the archive)
ByteProgress = Callable[[int, int], None]


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    """What one archive may expand to. `max_ratio` applies once `ratio_floor` bytes are out."""

    max_bytes: int = 8 * GiB
    max_members: int = 1_000_000
    max_path: int = 4096
    max_ratio: int = 200
    ratio_floor: int = 128 * MiB


def sniff_compression(head: bytes) -> str:
    """The compression `head` (the first bytes of a file) announces, or NONE."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return NONE


class TarStream(io.RawIOBase):
    """The uncompressed bytes of the archive at `source`; use as a context manager."""

    def __init__(self, source: Path, label: str, limits: Limits, progress: ByteProgress | None = None):
        super().__init__()
        self._fd = -1
        self._inner: _Reader | None = None
        self.label = label
        self.limits = limits
        self.position = 0  # uncompressed bytes handed out
        self.last_nonzero = 0  # position just after the last non-zero byte handed out
        self.fence = HEADER_BUDGET
        self._progress = progress
        self._next_progress = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._fd = _open_regular(source, label)
        try:
            self.size = os.fstat(self._fd).st_size
            self.compression = sniff_compression(os.pread(self._fd, 8, 0))
            self._inner = self._decompressor()
        except BaseException:
            self.close()
            raise

    @property
    def source_fd(self) -> int:
        """The archive file's descriptor (open until `close`), for a second reader (pread only)."""
        return self._fd

    def _decompressor(self) -> _Reader:
        raw = io.FileIO(self._fd, "rb", closefd=False)
        if self.compression == GZIP:
            return gzip.GzipFile(fileobj=raw, mode="rb")
        if self.compression == XZ:
            return lzma.LZMAFile(raw)
        if self.compression == BZIP2:
            return bz2.BZ2File(raw)
        if self.compression == ZSTD:
            return self._start_zstd()
        return io.BufferedReader(raw, 1 * MiB)

    def _start_zstd(self) -> IO[bytes]:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        argv = ["zstd", "-dc", "--no-progress"]
        try:
            # zstd shares our open file description: its reads move the offset we report as progress.
            self._proc = subprocess.Popen(argv, stdin=self._fd, stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as exc:
            raise ToolError(
                f"cannot read the zstd-compressed archive {self.label}: zstd: {exc.strerror}",
                argv=argv,
                hint="install zstd (apt-get install zstd)",
            ) from None
        assert self._proc.stdout is not None
        return self._proc.stdout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.fence - self.position)
        if want <= 0:
            raise self.refused(f"a member header is larger than {format_size(HEADER_BUDGET)}")
        assert self._inner is not None
        try:
            data = self._inner.read(want)
        except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
            raise self.corrupt(str(exc) or type(exc).__name__) from None
        count = len(data)
        view[:count] = data
        stripped = len(data.rstrip(b"\0"))
        if stripped:
            self.last_nonzero = self.position + stripped
        self.position += count
        self._check_limits()
        return count

    def compressed_position(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def _check_limits(self) -> None:
        limits = self.limits
        if self.position > limits.max_bytes:
            raise self.refused(f"it expands to more than {format_size(limits.max_bytes)}")
        if self.position < self._next_progress:
            return
        self._next_progress = self.position + _PROGRESS_STEP
        read = self.compressed_position()
        if self._progress is not None:
            self._progress(min(read, self.size), self.size)
        bomb = self.position > limits.max_ratio * max(read, 1)
        if self.compression != NONE and self.position >= limits.ratio_floor and bomb:
            raise self.refused(
                f"it expands more than {limits.max_ratio} times ({format_size(read)} "
                f"became {format_size(self.position)}): a decompression bomb?"
            )

    def drain(self) -> None:
        """Read to the end (checking what a decompressor only checks there, like gzip's CRC)."""
        self.fence = self.limits.max_bytes + 1
        buffer = bytearray(1 * MiB)
        while self.readinto(buffer):
            pass

    def finish(self) -> None:
        """After `drain`: wait for zstd and judge its exit status."""
        if self._proc is None:
            return
        try:
            code = procs.wait(self._proc, ZSTD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ToolError(
                f"zstd did not finish reading {self.label} within {ZSTD_TIMEOUT:.0f} s", argv=["zstd", "-dc"]
            ) from None
        if code < 0:
            raise ToolError(
                f"zstd was killed by signal {-code} while reading {self.label}",
                argv=["zstd", "-dc"],
                returncode=code,
                stderr=self._zstd_stderr(),
            )
        if code != 0:
            raise self.corrupt(f"zstd: {self._zstd_stderr() or f'exit status {code}'}")

    def end_at(self, end: int, after: str) -> None:
        """The stream read to its end (`drain`, `finish`), which must be the tar end-of-archive
        marker right after `end` (where tarfile stopped, after member `after`) and nothing else."""
        self.drain()
        self.finish()
        if self.position < end + tarfile.BLOCKSIZE:
            raise self.corrupt(f"it ends after member {after!r} without the tar end-of-archive marker")
        if self.last_nonzero > end:
            raise self.corrupt(f"after member {after!r} comes what is neither a member nor the end")

    def _zstd_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read(4096).decode(errors="replace").strip()
        return text.splitlines()[-1] if text else ""

    def corrupt(self, why: str) -> RejectedError:
        """The error for a stream that breaks off or makes no sense; names zstd's complaint if any."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)
        if self._proc is not None and self._proc.returncode:
            why = f"{why} (zstd: {self._zstd_stderr()})"
        return RejectedError(
            f"archive {self.label} is truncated or corrupt: {why}",
            hint="check the file (its size, its checksum) or download it again",
        )

    def refused(self, why: str) -> RejectedError:
        return RejectedError(f"archive {self.label} is refused: {why}")

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._inner is not None:
            self._inner.close()
            self._inner = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()

    def __enter__(self) -> TarStream:
        return self


def _open_regular(source: Path, label: str) -> int:
    """Open `source` for reading, refusing what is not a regular file (a FIFO would block forever)."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise NotFoundError(f"archive {source} does not exist") from None
        raise RejectedError(f"cannot open archive {label}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RejectedError(f"{label} is not a regular file, so not an archive")
    os.set_blocking(fd, True)
    return fd
