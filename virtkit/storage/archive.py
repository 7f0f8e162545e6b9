"""Safe extraction of untrusted tar archives (rootfs tarballs, OCI/Docker layers) into a directory.

`extract(source, dest)` reads the archive as a stream (compression found by magic) and writes each
member with openat-style calls: every directory on the way is opened with O_NOFOLLOW from `dest`,
so nothing is ever written, chowned or chmodded *through* a symlink, whatever the archive did
before. The rules, each refusing the whole archive with a RejectedError naming archive and member:

- absolute member names (``/etc/x``) and any ``..`` component; ``./x`` and ``x`` are the same;
- a member whose parent is a symlink or a file in `dest` (``etc -> /host/etc`` then ``etc/passwd``);
- hard links to anything not already extracted inside `dest` (or to a directory);
- more than `Limits.max_members` members, paths over `max_path` bytes, more than `max_bytes` of
  content, a compression ratio beyond `max_ratio`; streams that are truncated or corrupt, or carry
  data after the end of the tar archive; files that are no archive at all.

Symlinks are stored as they are, absolute targets included: a root filesystem is full of them, and
they are only dangerous if followed, which this module never does. Device nodes and FIFOs are
skipped and counted (a container gets /dev from its runtime); `strict=True` refuses them instead.
Setuid bits, and setgid bits on anything but directories, are stripped and counted. Numeric owners
are kept only with `owners=True` (it needs root), never user/group names, which mean nothing here.

`layer=True` applies an OCI layer: ``.wh.NAME`` deletes NAME from the lower layers and
``.wh..wh..opq`` empties its directory of everything the lower layers put there. On any failure
`dest` is removed entirely, whatever it held: callers pass a fresh directory (or a rootfs being
built layer by layer, which is worthless once a layer is refused).
"""

from __future__ import annotations

import errno
import shutil
import tarfile
from pathlib import Path

from virtkit.errors import RejectedError, VirtkitError
from virtkit.storage.members import ExtractStats, Members
from virtkit.storage.tarstream import HEADER_BUDGET, ByteProgress, Limits, TarStream

# Failures of the host, not of the archive.
_HOST_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE)


def extract(
    source: Path,
    dest: Path,
    *,
    label: str | None = None,
    layer: bool = False,
    owners: bool = False,
    strict: bool = False,
    limits: Limits | None = None,
    progress: ByteProgress | None = None,
) -> ExtractStats:
    """Extract the tar archive `source` (plain, gzip, xz, bzip2 or zstd) into `dest`.

    `dest` is created if missing. `label` names the archive in messages (default: its file name).
    Raises NotFoundError for a missing source, RejectedError for a refused archive, ToolError when
    zstd fails; on any failure `dest` is gone.
    """
    label = label or source.name
    try:
        dest.mkdir(exist_ok=True)
        with TarStream(source, label, limits or Limits(), progress) as stream:
            members = Members(dest, label, stream.limits, layer=layer, owners=owners, strict=strict)
            try:
                _run(stream, members)
            finally:
                members.close()
            return members.stats
    except OSError as exc:
        remove_tree(dest)
        raise VirtkitError(f"cannot extract archive {label} into {dest}: {exc.strerror or exc}") from None
    except BaseException:
        remove_tree(dest)
        raise


def _run(stream: TarStream, members: Members) -> None:
    name = ""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            while (member := _next(tar, stream)) is not None:
                name = member.name
                stream.fence = tar.offset + HEADER_BUDGET
                _one(members, tar, member)
                vars(tar)["members"].clear()  # tarfile keeps them all otherwise: a million TarInfo
            end = tar.offset
    except tarfile.TarError as exc:
        if not name:
            raise RejectedError(
                f"{stream.label} is not a tar archive (plain, or gzip, xz, bzip2 or zstd compressed): {exc}"
            ) from None
        raise stream.corrupt(f"{exc} (after member {name!r})") from None
    members.finish()
    stream.end_at(end, name)


def _next(tar: tarfile.TarFile, stream: TarStream) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except ValueError as exc:  # a malformed number field deep in tarfile's header parsing
        raise stream.corrupt(f"bad member header: {exc}") from None


def _one(members: Members, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    try:
        members.add(tar, member)
    except OSError as exc:
        if exc.errno in _HOST_ERRNOS:
            raise
        raise members.refuse(member.name, f"cannot be extracted: {exc.strerror or exc}") from None


def remove_tree(path: Path) -> None:
    """Remove `path` and everything under it, never following a symlink out of it."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["ExtractStats", "Limits", "extract", "remove_tree"]
