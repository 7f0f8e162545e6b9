"""Directory trees in a backup: a container's writable layer and an image's directory, as tar entries.

Export walks the tree (never following a symlink, never leaving its filesystem) and describes each
entry as a TarInfo whose extended attributes ride in pax headers (``SCHILY.xattr.NAME``, as GNU
tar writes them). A container's writable layer is made portable on the way:

- ids are the container's own (host uid BASE+N is written as N), so the layer can be given to a
  container with any other range (`shift_tree` on import);
- ``security.capability`` is written as version 2 (a v3 attribute names the host uid of the
  namespace's root, which means nothing elsewhere) and made v3 for the new range on import;
- only what overlayfs and the container need is kept: whiteouts (0/0 character devices),
  ``trusted.overlay.opaque`` and ``redirect``, file capabilities, ``user.*``; an ``origin`` (a
  file handle of this host's disk) is dropped, as are device nodes and sockets;
- a metacopy entry (metadata in the layer, data in the image: how a container without idmapped
  mounts got its ids) is written whole, its data read from the image; one that only shifted an
  image file's owner into the range is left out: the importing host shifts again if it must.

`tarinfo_line` is the entry as the tree's digest covers it, the same on export and on import.
"""

from __future__ import annotations

import os
import stat
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import StateError
from virtkit.storage.backupformat import entry_line
from virtkit.storage.rootpath import resolve_in_root

PAX_XATTR = "SCHILY.xattr."
CAPABILITY = "security.capability"
METACOPY = "trusted.overlay.metacopy"
REDIRECT = "trusted.overlay.redirect"
OPAQUE = "trusted.overlay.opaque"
UPPER_XATTRS = frozenset({OPAQUE, REDIRECT, CAPABILITY})
IMAGE_XATTRS = frozenset({CAPABILITY})
OVERFLOW = 65534
_CAP_V2, _CAP_V3 = 0x02000000, 0x03000000
_CAP_V2_SIZE, _CAP_V3_SIZE = 20, 24
_KINDS = {tarfile.REGTYPE: "f", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l", tarfile.LNKTYPE: "h",
          tarfile.CHRTYPE: "c", tarfile.FIFOTYPE: "p"}  # fmt: skip


@dataclass(frozen=True)
class IdRange:
    """A container's ids on the host: its id N is host uid+N / gid+N (N < size)."""

    uid: int
    gid: int
    size: int = 65536

    def inner(self, value: int, base: int) -> int:
        """The container's id for host id `value` (outside the range: itself, or nobody)."""
        if base <= value < base + self.size:
            return value - base
        return value if value < self.size else OVERFLOW

    def outer(self, value: int, base: int) -> int:
        return base + (value if value < self.size else OVERFLOW)


@dataclass
class Entry:
    """One tree entry: its TarInfo (name relative to the tree) and where its content is read."""

    info: tarfile.TarInfo
    path: Path | None = None  # a regular file's content (opened without following symlinks)


@dataclass
class Walk:
    """What a walk left out, for the user's notes."""

    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, what: str) -> None:
        self.skipped[what] = self.skipped.get(what, 0) + 1

    def notes(self, tree: str) -> list[str]:
        return [f"{tree}: {count} {what} left out" for what, count in sorted(self.skipped.items())]


def caps_v2(value: bytes) -> bytes:
    """A file capability attribute as version 2 (a v3 one's namespace root dropped)."""
    if len(value) == _CAP_V3_SIZE and struct.unpack_from("<I", value)[0] & 0xFF000000 == _CAP_V3:
        magic = struct.unpack_from("<I", value)[0]
        return struct.pack("<I", (magic & 0x00FFFFFF) | _CAP_V2) + value[4:_CAP_V2_SIZE]
    return value


def caps_v3(value: bytes, rootid: int) -> bytes:
    """A version-2 file capability attribute as version 3 for a namespace whose root is `rootid`."""
    if len(value) != _CAP_V2_SIZE or struct.unpack_from("<I", value)[0] & 0xFF000000 != _CAP_V2:
        return value
    magic = struct.unpack_from("<I", value)[0]
    return struct.pack("<I", (magic & 0x00FFFFFF) | _CAP_V3) + value[4:] + struct.pack("<I", rootid)


def xattrs_of(info: tarfile.TarInfo) -> dict[str, bytes]:
    """The extended attributes a TarInfo carries in its pax headers."""
    found = {}
    for key, value in info.pax_headers.items():
        if key.startswith(PAX_XATTR):
            found[key[len(PAX_XATTR) :]] = value.encode("utf-8", "surrogateescape")
    return found


def tarinfo_line(info: tarfile.TarInfo, path: str, link: str, content: str) -> bytes:
    """`info` (at `path` in its tree; `link` a hard link's target in the tree) as its digest sees it."""
    kind = _KINDS.get(info.type, "?")
    device = (info.devmajor, info.devminor) if info.type == tarfile.CHRTYPE else (0, 0)
    target = link if info.type == tarfile.LNKTYPE else info.linkname if info.type == tarfile.SYMTYPE else ""
    return entry_line(path, kind, info.mode & 0o7777, info.uid, info.gid, int(info.mtime), target, device,
                      xattrs_of(info), content)  # fmt: skip


def walk(top: Path, *, ids: IdRange | None = None, lower: Path | None = None,
         allowed: frozenset[str] = IMAGE_XATTRS, report: Walk | None = None) -> Iterator[Entry]:  # fmt: skip
    """The entries of the tree at `top`, parents first, in a stable order. `ids`: the container's
    range (ids written as its own); `lower`: the image tree its metacopy entries read data from."""
    report = report or Walk()
    device = os.lstat(top).st_dev
    links: dict[tuple[int, int], str] = {}
    for directory, dirs, files in os.walk(top):
        dirs.sort()
        relative_dir = os.path.relpath(directory, top)
        relative_dir = "" if relative_dir == "." else relative_dir
        if not relative_dir:
            root = _entry(top, "", os.lstat(top), ids, allowed, links, lower, report)
            assert root is not None  # a directory is never left out
            yield root
        kept = []
        for name in dirs:
            if os.lstat(os.path.join(directory, name)).st_dev != device:
                report.skip("mount points")
                continue
            kept.append(name)
        dirs[:] = kept
        for name in sorted([*dirs, *files]):
            relative = f"{relative_dir}/{name}" if relative_dir else name
            info = os.lstat(os.path.join(directory, name))
            entry = _entry(top, relative, info, ids, allowed, links, lower, report)
            if entry is not None:
                yield entry


def _entry(top: Path, relative: str, st: os.stat_result, ids: IdRange | None, allowed: frozenset[str],
           links: dict[tuple[int, int], str], lower: Path | None, report: Walk) -> Entry | None:  # fmt: skip
    path = top / relative if relative else top
    info = tarfile.TarInfo(relative or ".")
    info.mode, info.mtime = stat.S_IMODE(st.st_mode), st.st_mtime
    info.uid = ids.inner(st.st_uid, ids.uid) if ids else st.st_uid
    info.gid = ids.inner(st.st_gid, ids.gid) if ids else st.st_gid
    xattrs = _xattrs(path, allowed, report) if not stat.S_ISLNK(st.st_mode) else {}
    kind = _kind(st, report, whiteouts=ids is not None or lower is not None)
    if kind is None:
        return None
    info.type = kind
    key = (st.st_dev, st.st_ino)
    if kind != tarfile.DIRTYPE and st.st_nlink > 1:
        if key in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[key]
            _set_xattrs(info, xattrs)
            return Entry(info)
        links[key] = relative
    entry = Entry(info)
    if kind == tarfile.SYMTYPE:
        info.linkname = os.readlink(path)
    elif kind == tarfile.REGTYPE:
        info.size, entry.path = st.st_size, path
        meta = xattrs.pop(METACOPY, None)
        if meta is not None and lower is not None:
            if _shift_artifact(lower, relative, xattrs, info, st):
                links.pop(key, None)
                return None
            entry.path = _metacopy_data(lower, relative, xattrs.pop(REDIRECT, None))
            info.size = os.lstat(entry.path).st_size
    _set_xattrs(info, xattrs)
    return entry


def _kind(st: os.stat_result, report: Walk, *, whiteouts: bool) -> bytes | None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return tarfile.REGTYPE
    if stat.S_ISDIR(mode):
        return tarfile.DIRTYPE
    if stat.S_ISLNK(mode):
        return tarfile.SYMTYPE
    if stat.S_ISFIFO(mode):
        return tarfile.FIFOTYPE
    if stat.S_ISCHR(mode) and st.st_rdev == 0 and whiteouts:
        return tarfile.CHRTYPE  # an overlayfs whiteout
    report.skip("sockets" if stat.S_ISSOCK(mode) else "device nodes")
    return None


def _xattrs(path: Path, allowed: frozenset[str], report: Walk) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return found
    for name in names:
        if name in allowed or name == METACOPY or name.startswith("user."):
            found[name] = os.getxattr(path, name, follow_symlinks=False)
        elif not name.startswith("trusted.overlay."):  # overlayfs bookkeeping of this host
            report.skip(f"extended attributes ({name.split('.')[0]}.*)")
    if CAPABILITY in found:
        found[CAPABILITY] = caps_v2(found[CAPABILITY])
    return found


def _set_xattrs(info: tarfile.TarInfo, xattrs: dict[str, bytes]) -> None:
    info.pax_headers = {PAX_XATTR + name: value.decode("utf-8", "surrogateescape")
                        for name, value in sorted(xattrs.items())}  # fmt: skip


def _shift_artifact(lower: Path, relative: str, xattrs: dict[str, bytes], info: tarfile.TarInfo,
                    st: os.stat_result) -> bool:  # fmt: skip
    """Whether a metacopy entry only shifted the owner of the image's file at the same path."""
    if REDIRECT in xattrs or st.st_nlink > 1 or set(xattrs) - {CAPABILITY}:
        return False
    try:
        below = os.lstat(lower / relative)
    except OSError:
        return False
    same = (stat.S_IMODE(below.st_mode), below.st_uid, below.st_gid) == (info.mode, info.uid, info.gid)
    return stat.S_ISREG(below.st_mode) and same


def _metacopy_data(lower: Path, relative: str, redirect: bytes | None) -> Path:
    """The image file holding a metacopy entry's data (symlinks resolved inside the image)."""
    where = redirect.decode("utf-8", "surrogateescape") if redirect else relative
    found = resolve_in_root(lower, where)
    if found is None or not found.is_file() or found.is_symlink():
        raise StateError(
            f"the writable layer's {relative} keeps its data in the image at {where}, which is not there"
        )
    return found


def shift_tree(top: Path, ids: IdRange) -> int:
    """Give every entry under `top` (its ids the container's own) the host ids of range `ids`,
    keeping setuid/setgid bits (chown clears them) and file capabilities (made v3 for the new
    namespace root); how many entries were changed."""
    count = 0
    seen: set[tuple[int, int]] = set()  # a hard link's inode is shifted once
    for directory, dirs, files in os.walk(top):
        names = [directory] if directory == str(top) else []
        names += [os.path.join(directory, name) for name in (*dirs, *files)]
        for path in names:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                _shift_one(path, st, ids)
                count += 1
    return count


def _shift_one(path: str, st: os.stat_result, ids: IdRange) -> None:
    uid, gid = ids.outer(st.st_uid, ids.uid), ids.outer(st.st_gid, ids.gid)
    link = stat.S_ISLNK(st.st_mode)
    caps = None
    if not link:
        try:
            caps = os.getxattr(path, CAPABILITY, follow_symlinks=False)
        except OSError:
            caps = None
    os.lchown(path, uid, gid)
    if link:
        return
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    if caps is not None:
        os.setxattr(path, CAPABILITY, caps_v3(caps, ids.uid), follow_symlinks=False)
