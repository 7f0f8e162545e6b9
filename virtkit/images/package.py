"""Walking an untrusted appliance tar (OVA, XVA) member by member, as a stream, never into memory whole.

`walk` reads the archive through storage/tarstream.py (compression by magic, byte and member
limits, the fence that bounds a member header) and hands each member to a visitor; afterwards it
checks what storage/archive.py checks: the end-of-archive marker is there (else: truncated) and
nothing follows it. Every member must be a regular file (a directory only where the caller allows
it): symlinks, hard links, devices and FIFOs are refused, whatever they point at, as is a name
that is absolute, holds `..` or comes twice. `write_sparse` writes a member's data leaving holes
for runs of zeros, so a mostly-empty disk costs no space.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from virtkit.errors import RejectedError, VirtkitError
from virtkit.images.detect import printable
from virtkit.storage.tarstream import HEADER_BUDGET, Limits, TarStream

_HOLE = 64 * 1024
_ZEROS = bytes(_HOLE)
BLOCK = 1024 * 1024

# (the open tar, the member, its checked name without "./") -> None
Visitor = Callable[[tarfile.TarFile, tarfile.TarInfo, str], None]


def walk(
    source: Path,
    label: str,
    limits: Limits,
    visit: Visitor,
    *,
    directories: bool = False,
    unique: bool = True,
) -> None:
    """Visit every member of the tar archive `source`; RejectedError for anything refused. A name
    may come twice only when not `unique` (an XVA's keep-alive chunks: the visitor judges)."""
    seen: set[str] = set()
    name = ""
    with TarStream(source, label, limits) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                while (member := _next(tar, stream)) is not None:
                    name = member_name(member, label)
                    if unique and name in seen:
                        raise RejectedError(
                            f"archive {label} is refused: member {printable(name)!r} comes twice"
                        )
                    seen.add(name)
                    if len(seen) > limits.max_members:
                        raise RejectedError(
                            f"archive {label} is refused: it has more than the {limits.max_members} members "
                            "its descriptor allows"
                        )
                    stream.fence = tar.offset + HEADER_BUDGET
                    if member.isdir() and directories:
                        continue
                    if not member.isreg():
                        raise RejectedError(
                            f"archive {label} is refused: member {printable(name)!r} is "
                            f"{_kind(member)}, not a regular file",
                            hint="an appliance holds only files",
                        )
                    visit(tar, member, name)
                    vars(tar)["members"].clear()  # tarfile keeps every TarInfo otherwise
                end = tar.offset
        except tarfile.TarError as exc:
            if not name:
                raise RejectedError(f"{label} is not a tar archive: {exc}") from None
            raise stream.corrupt(f"{exc} (after member {printable(name)!r})") from None
        except OSError as exc:  # writing what was read: no room left, the disk failing
            raise VirtkitError(f"cannot extract {label}: {exc.strerror or exc}") from None
        stream.drain()
        stream.finish()
        if stream.position < end + tarfile.BLOCKSIZE:
            raise stream.corrupt(
                f"it ends after member {printable(name)!r} without the end-of-archive marker"
            )
        if stream.last_nonzero > end:
            raise stream.corrupt(
                f"after member {printable(name)!r} comes what is neither a member nor the end"
            )


class _Stop(Exception):
    pass


def first_member(source: Path, label: str, limit: int) -> tuple[str, bytes]:
    """The name and content (at most `limit` bytes) of the archive's first member; nothing else is read."""
    found: list[tuple[str, bytes]] = []

    def first(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        found.append((name, read_small(tar, member, label, limit)))
        raise _Stop

    try:
        walk(source, label, Limits(max_bytes=limit + 2 * HEADER_BUDGET, max_members=1), first)
    except _Stop:
        return found[0]
    raise RejectedError(f"{label} is an empty tar archive")


def _next(tar: tarfile.TarFile, stream: TarStream) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except ValueError as exc:  # a malformed number field deep in tarfile's header parsing
        raise stream.corrupt(f"bad member header: {exc}") from None


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {printable(member.linkname)!r})"
    if member.islnk():
        return f"a hard link (to {printable(member.linkname)!r})"
    if member.isdev():
        return "a device node" if member.ischr() or member.isblk() else "a FIFO"
    return "a directory" if member.isdir() else "a special file"


def member_name(member: tarfile.TarInfo, label: str) -> str:
    """A member's name as the descriptor would name it ("./x.vmdk" is "x.vmdk"), refused when it
    is absolute, holds '..' or an empty part, or is unprintable."""
    name = member.name.removeprefix("./").rstrip("/") if member.isdir() else member.name.removeprefix("./")
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or not name.isprintable():
        raise RejectedError(
            f"archive {label} is refused: member {printable(member.name)!r} has a name "
            "outside the archive (absolute, '..', empty or unprintable)"
        )
    return name


def read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, label: str, limit: int) -> bytes:
    """The whole content of a small member (a descriptor, a manifest, a checksum), at most `limit`."""
    if member.size > limit:
        raise RejectedError(
            f"archive {label} is refused: member {printable(member.name)!r} is "
            f"{member.size} bytes, more than the {limit} it may have"
        )
    source = tar.extractfile(member)
    assert source is not None
    data = source.read(member.size)
    if len(data) != member.size:
        raise RejectedError(f"archive {label} is truncated: member {printable(member.name)!r} breaks off")
    return data


def copy_member(
    source: IO[bytes], size: int, fd: int | None, update: Callable[[bytes], None], label: str, name: str
) -> None:
    """Stream `size` bytes of a member to `fd` (sparse; None: only read), passing each block to `update`."""
    left = size
    while left:
        chunk = source.read(min(BLOCK, left))
        if not chunk:
            raise RejectedError(f"archive {label} is truncated: member {printable(name)!r} breaks off")
        update(chunk)
        if fd is not None:
            write_sparse(fd, chunk)
        left -= len(chunk)


def write_sparse(fd: int, chunk: bytes) -> None:
    """Write `chunk` at `fd`'s offset, seeking over 64 KiB runs of zeros (the file is truncated to
    its full size by the caller, so the holes read as zeros)."""
    view = memoryview(chunk)
    while view:
        piece = view[:_HOLE]
        if len(piece) == _HOLE and piece == _ZEROS:
            os.lseek(fd, _HOLE, os.SEEK_CUR)
        else:
            while piece:
                piece = piece[os.write(fd, piece) :]
        view = view[_HOLE:]


def create(path: Path, size: int | None = None) -> int:
    """A new file for extracted data (never through a symlink, never over a file); its descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    if size is not None:
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            raise VirtkitError(f"cannot make {path.name} of {size} bytes: {exc.strerror or exc}") from None
    return fd


def plain_limits(source: Path, members: int) -> Limits:
    """What an appliance tar may expand to: far past its own size only when compressed (a bomb)."""
    size = os.stat(source).st_size
    return Limits(max_bytes=max(size, 1) * 200 + BLOCK, max_members=members, max_ratio=200)
