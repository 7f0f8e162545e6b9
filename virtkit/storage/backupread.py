"""Reading an untrusted backup archive into a staging directory, checking everything on the way.

The archive is read once, as a stream (storage/tarstream.py: compression by magic, limits, the
fence that bounds a member header). Its first member must be the manifest (at most 1 MiB), which
is parsed and checked (`check` lets the caller refuse early: a name taken, no room) before any
data is written. Then every member must be one the manifest announced, of the size it announced:

- ``disks/ID`` and ``files/ID``: regular files, written to ``staging/parts/ID`` (zero runs as
  holes), hashed as they are written (versions 1 and 2: from version 3 the stored digest covers
  them, hashed from the archive file by a thread beside decompression: storage/backupstored.py;
  from version 4, in a zstd archive, a big one's run is zstd's own frame checksum's to check, and
  the rest of the file is hashed once the list has said where that run is); a symlink, link,
  device or a second copy is refused;
- ``trees/ID/...``: entries of one tree, written under ``staging/trees/ID`` by the safe extractor
  in exact mode (storage/members.py: no write through a symlink, no ``..``, no absolute path, no
  hard link leaving the tree, no device node but whiteouts, only known extended attributes);
  the tree's digest and entry count are computed as they come;
- ``virtkit-backup.sha256``, last: the checksums, compared with what was computed.

Anything else — a member the manifest does not name, one larger than it says (a decompression
bomb), data after the end, a truncated stream, a checksum that differs — is a RejectedError. The
caller removes the staging directory on any failure: nothing is registered before `read` returns.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import RejectedError
from virtkit.storage.backupformat import (
    CHECKSUMS,
    DISKS,
    FILES,
    MANIFEST,
    MAX_CHECKSUMS,
    MAX_MANIFEST,
    OWN_RUN,
    SKIPPED_VERSION,
    STORED_VERSION,
    TREES,
    Checksums,
    Manifest,
    TreeEntry,
    parse_checksums,
    parse_manifest,
)
from virtkit.storage.backupstored import StoredHasher
from virtkit.storage.backuptree import IMAGE_XATTRS, UPPER_XATTRS, tarinfo_line
from virtkit.storage.members import Members
from virtkit.storage.tarstream import (
    HEADER_BUDGET,
    NONE,
    ZSTD,
    ByteProgress,
    Limits,
    TarStream,
    sniff_compression,
)
from virtkit.units import MiB, format_size

PARTS = "parts"
CONTENT_CHECKSUM_FLAG = 0x04  # in a zstd frame header's descriptor byte (RFC 8878, 3.1.1.1.1)
_HOLE = 64 * 1024
_ZEROS = bytes(_HOLE)
_HEADER_ROOM = 8 * 1024  # a member's header with its pax records (long name, extended attributes)


@dataclass
class Staged:
    """What `read` left in the staging directory, all of it checked."""

    dir: Path
    manifest: Manifest
    parts: dict[str, Path] = field(default_factory=dict)  # disk and file IDs -> their files
    trees: dict[str, Path] = field(default_factory=dict)  # tree IDs -> their directories


@dataclass
class _Tree:
    entry: TreeEntry
    members: Members
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    content: hashlib._Hash = field(default_factory=hashlib.sha256)
    entries: int = 0
    bytes: int = 0
    seen: set[str] = field(default_factory=set)


class _Reader:
    def __init__(self, stream: TarStream, staging: Path, label: str) -> None:
        self.stream, self.staging, self.label = stream, staging, label
        self.sums: dict[str, dict[str, str]] = {DISKS: {}, FILES: {}, TREES: {}}
        self.trees: dict[str, _Tree] = {}
        self.checksums: Checksums | None = None
        self.manifest_sum = ""
        self.stored: StoredHasher | None = None  # from version 3: the archive's own bytes, hashed
        self.own_runs = 0  # version 4: how many ranges the stored digest leaves out (big parts' runs)
        self.checksums_at = 0  # where the checksum list's header begins, in the tar stream

    def refuse(self, why: str) -> RejectedError:
        return RejectedError(f"archive {self.label} is refused: {why}")

    def manifest(self, tar: tarfile.TarFile) -> Manifest:
        try:
            first = tar.next()
        except (tarfile.TarError, ValueError) as exc:
            raise RejectedError(f"{self.label} is not a virtkit backup (not a tar archive: {exc})") from None
        if first is None or first.name.removeprefix("./") != MANIFEST or not first.isreg():
            raise RejectedError(f"{self.label} is not a virtkit backup: its first member is not {MANIFEST}")
        if first.size > MAX_MANIFEST:
            raise self.refuse(f"its manifest is {format_size(first.size)}, more than the "
                              f"{format_size(MAX_MANIFEST)} a manifest may have")  # fmt: skip
        data = self._small(tar, first)
        self.manifest_sum = hashlib.sha256(data).hexdigest()
        manifest = parse_manifest(data, self.label)
        if manifest.version >= SKIPPED_VERSION and self.stream.compression == ZSTD:
            sizes = [d.size for d in manifest.disks] + [f.size for f in manifest.files]
            self.own_runs = sum(size >= OWN_RUN for size in sizes)
        if manifest.version >= STORED_VERSION:
            self.stored = StoredHasher(self.stream.source_fd, self.stream.size, early=not self.own_runs)
        return manifest

    def _small(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
        source = tar.extractfile(member)
        assert source is not None
        data = source.read(member.size)
        if len(data) != member.size:
            raise self.stream.corrupt(f"member {member.name!r} breaks off")
        return data

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, manifest: Manifest,
               staged: Staged) -> None:  # fmt: skip
        name = member.name.removeprefix("./")
        if self.checksums is not None:
            raise self.refuse(f"member {name!r} comes after the checksum list, which must be last")
        if name == CHECKSUMS:
            if not member.isreg() or member.size > MAX_CHECKSUMS:
                raise self.refuse("its checksum list is not a small regular file")
            self.checksums = parse_checksums(self._small(tar, member), self.label)
            self.checksums_at = member.offset
            return
        announced = manifest.member_names()
        if name in announced:
            kind, part = announced[name]
            sizes = {e.id: e.size for e in manifest.disks} | {e.id: e.size for e in manifest.files}
            declared = sizes[part]
            self._part(tar, member, kind, part, declared, staged)
            return
        head, _, rest = name.partition("/")
        tree_id, _, relative = rest.partition("/")
        entry = next((t for t in manifest.trees if t.id == tree_id), None) if head == TREES else None
        if entry is None:
            raise self.refuse(f"member {name!r} is not in its manifest")
        self._tree_member(tar, member, entry, relative, staged)

    def _part(self, tar: tarfile.TarFile, member: tarfile.TarInfo, kind: str, part: str, declared: int,
              staged: Staged) -> None:  # fmt: skip
        if part in self.sums[kind]:
            raise self.refuse(f"member {member.name!r} comes twice")
        if not member.isreg():
            raise self.refuse(f"member {member.name!r} is not a regular file (a link or a device)")
        if member.size != declared:
            more = "more" if member.size > declared else "less"
            raise self.refuse(f"member {member.name!r} holds {member.size} bytes, {more} than the "
                              f"{declared} its manifest says")  # fmt: skip
        path = self.staging / PARTS / part
        path.parent.mkdir(mode=0o700, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None
        digest = hashlib.sha256() if self.stored is None else None  # else: the stored digest's
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while chunk := source.read(MiB):
                if digest is not None:
                    digest.update(chunk)
                _write_sparse(fd, chunk)
            os.ftruncate(fd, member.size)
        finally:
            os.close(fd)
        self.sums[kind][part] = digest.hexdigest() if digest is not None else ""
        staged.parts[part] = path

    def _tree_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, entry: TreeEntry,
                     relative: str, staged: Staged) -> None:  # fmt: skip
        tree = self.trees.get(entry.id) or self._open_tree(entry, staged)
        if relative in tree.seen:
            raise self.refuse(f"member {member.name!r} comes twice")
        tree.seen.add(relative)
        tree.entries += 1
        tree.bytes += member.size if member.isreg() else 0
        if tree.entries > entry.entries or tree.bytes > entry.bytes:
            raise self.refuse(f"tree {entry.id!r} holds more than the {entry.entries} entries and "
                              f"{entry.bytes} bytes its manifest says (at {member.name!r})")  # fmt: skip
        link = ""
        if member.islnk():
            prefix = f"{TREES}/{entry.id}/"
            if not member.linkname.startswith(prefix):
                raise self.refuse(f"member {member.name!r} is a hard link out of its tree "
                                  f"(to {member.linkname!r})")  # fmt: skip
            link = member.linkname[len(prefix) :]
            member.linkname = link
        member.name = relative or "."
        tree.content = hashlib.sha256()
        tree.members.add(tar, member)
        content = tree.content.hexdigest() if member.isreg() else ""
        tree.digest.update(tarinfo_line(member, relative, link, content))

    def _open_tree(self, entry: TreeEntry, staged: Staged) -> _Tree:
        dest = self.staging / TREES / entry.id
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        dest.mkdir(mode=0o700)
        allowed = UPPER_XATTRS if entry.role == "upper" else IMAGE_XATTRS
        holder: list[_Tree] = []
        members = Members(dest, f"{self.label} (tree {entry.id})", self.stream.limits, layer=False,
                          owners=True, strict=True, exact=True, xattrs=allowed,
                          on_data=lambda chunk: holder[0].content.update(chunk))  # fmt: skip
        tree = _Tree(entry, members)
        holder.append(tree)
        self.trees[entry.id] = tree
        staged.trees[entry.id] = dest
        return tree

    def verify(self, manifest: Manifest) -> None:
        """After the stream: everything announced came, and every checksum is the one computed."""
        if self.checksums is None:
            raise self.stream.corrupt("it ends before its checksum list")
        for name, (kind, part) in manifest.member_names().items():
            if part not in self.sums[kind]:
                raise self.stream.corrupt(f"member {name} is missing")
        for entry in manifest.trees:
            tree = self.trees.get(entry.id)
            if tree is None or tree.entries != entry.entries or tree.bytes != entry.bytes:
                raise self.stream.corrupt(f"tree {entry.id!r} is incomplete")
            self.sums[TREES][entry.id] = tree.digest.hexdigest()
        expected = self.checksums
        if expected.manifest != self.manifest_sum:
            raise self._mismatch("its manifest")
        kinds = [(DISKS, expected.disks), (FILES, expected.files), (TREES, expected.trees)]
        if self.stored is not None:
            self._verify_stored(expected, manifest.version)
            kinds = kinds[2:]
        elif expected.stored is not None:
            raise self.refuse(f"its checksum list has a stored digest, which format version "
                              f"{manifest.version} does not")  # fmt: skip
        for kind, wanted in kinds:
            if set(wanted) != set(self.sums[kind]):
                raise self.refuse(f"its checksum list does not name the same {kind} as its manifest")
            for part, value in wanted.items():
                if self.sums[kind][part] != value:
                    raise self._mismatch(f"{kind}/{part}")

    def _verify_stored(self, expected: Checksums, version: int) -> None:
        """From version 3: the sha256 of the archive's bytes before the checksum list's run (from
        version 4, less the ranges it leaves out: `_check_skipped`)."""
        assert self.stored is not None
        if expected.stored is None or expected.disks or expected.files:
            raise self.refuse(f"its checksum list is not one of format version {STORED_VERSION} "
                              "(a stored digest, no sha256 of each disk and file)")  # fmt: skip
        length = expected.stored.bytes
        skipped = self._check_skipped(expected.stored.skipped, version, length)
        digest = self.stored.digest(length, skipped)
        if digest is None or not self._list_begins_at(length):
            raise self.refuse(f"its checksum list says its data ends at byte {length} of "
                              f"{self.stream.size}: that is not where the list begins")  # fmt: skip
        if digest != expected.stored.sha256:
            raise self._mismatch(f"its first {length} bytes")

    def _check_skipped(self, skipped: list[tuple[int, int]] | None, version: int, length: int
                       ) -> list[tuple[int, int]]:  # fmt: skip
        """The ranges the stored digest leaves out, checked: from version 4 (and only there), one
        for each disk and file of at least OWN_RUN bytes in a zstd archive (none in another), in
        order, apart, before `length`, each beginning with a zstd frame that carries its content
        checksum, and followed by one."""
        if version < SKIPPED_VERSION:
            if skipped is not None:
                raise self.refuse(f"its checksum list leaves ranges out of its stored digest, which "
                                  f"format version {version} does not")  # fmt: skip
            return []
        if skipped is None or len(skipped) != self.own_runs:
            raise self.refuse(f"its checksum list leaves {len(skipped or [])} ranges out of its stored "
                              f"digest, not one for each of its {self.own_runs} big disks and files "
                              f"compressed with zstd")  # fmt: skip
        previous = 0
        for start, end in skipped:
            if not previous < start < end <= length or not (self._checked_frame(start)
                                                             and self._frame_at(end)):  # fmt: skip
                raise self.refuse(f"its checksum list leaves bytes {start} to {end} out of its stored "
                                  "digest: that is not one zstd run with its content checksum")  # fmt: skip
            previous = end
        return skipped

    def _frame_at(self, offset: int) -> bool:
        """Whether a frame of the archive's compression begins at byte `offset`."""
        return sniff_compression(os.pread(self.stream.source_fd, 8, offset)) == self.stream.compression

    def _checked_frame(self, offset: int) -> bool:
        """Whether a zstd frame whose header asks for its content checksum begins at `offset`."""
        head = os.pread(self.stream.source_fd, 8, offset)
        return sniff_compression(head) == ZSTD and len(head) > 4 and bool(head[4] & CONTENT_CHECKSUM_FLAG)

    def _list_begins_at(self, length: int) -> bool:
        """Whether the checksum list's run begins at byte `length` of the file: its header there in
        a plain tar; a frame of the archive's compression there in a compressed one."""
        if self.stream.compression == NONE:
            return length == self.checksums_at
        return self._frame_at(length)

    def _mismatch(self, what: str) -> RejectedError:
        return RejectedError(
            f"archive {self.label} is corrupt: the sha256 of {what} is not the one it was exported with",
            hint="copy the archive again from where it was made",
        )


def _write_sparse(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        if len(view) >= _HOLE and view[:_HOLE] == _ZEROS:
            os.lseek(fd, _HOLE, os.SEEK_CUR)
            view = view[_HOLE:]
            continue
        piece = view[:_HOLE]
        while piece:
            piece = piece[os.write(fd, piece) :]
        view = view[_HOLE:]


def _limits(manifest: Manifest) -> Limits:
    """What the rest of the stream may hold: the announced data, a header per member, the list."""
    members = len(manifest.disks) + len(manifest.files) + sum(t.entries for t in manifest.trees) + 2
    room = manifest.declared_bytes() + members * _HEADER_ROOM + MAX_CHECKSUMS + 2 * MAX_MANIFEST
    return Limits(max_bytes=room, max_members=members, max_ratio=1 << 40)


def read(source: Path, staging: Path, *, label: str | None = None, check: Callable[[Manifest], None],
         progress: ByteProgress | None = None) -> Staged:  # fmt: skip
    """Read and check the backup at `source` into the existing, empty directory `staging`."""
    label = label or source.name
    first = Limits(max_bytes=MAX_MANIFEST + 2 * HEADER_BUDGET, max_members=2, max_ratio=1 << 40)
    with TarStream(source, label, first, progress) as stream:
        reader = _Reader(stream, staging, label)
        try:
            staged = _read(stream, reader, check)
            reader.verify(staged.manifest)
        finally:
            if reader.stored is not None:  # before the stream closes the file it reads
                reader.stored.stop()
    return staged


def _read(stream: TarStream, reader: _Reader, check: Callable[[Manifest], None]) -> Staged:
    """The stream read to its end, every member staged and hashed."""
    name = MANIFEST
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            stream.fence = HEADER_BUDGET
            manifest = reader.manifest(tar)
            check(manifest)
            stream.limits = _limits(manifest)
            staged = Staged(reader.staging, manifest)
            while (member := _next(tar, stream)) is not None:
                name = member.name
                stream.fence = tar.offset + HEADER_BUDGET
                reader.member(tar, member, manifest, staged)
                vars(tar)["members"].clear()
            end = tar.offset
        for tree in reader.trees.values():
            tree.members.finish()
    except tarfile.TarError as exc:
        if not reader.manifest_sum:
            if stream.compression != NONE:  # a decompressor's complaint says more: truncated?
                stream.drain()
                stream.finish()
            what = f"{reader.label} is not a virtkit backup (not a tar archive: {exc})"
            raise RejectedError(what) from None
        raise stream.corrupt(f"{exc} (after member {name!r})") from None
    finally:
        for tree in reader.trees.values():
            tree.members.close()
    stream.end_at(end, name)
    return staged


def _next(tar: tarfile.TarFile, stream: TarStream) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except ValueError as exc:
        raise stream.corrupt(f"bad member header: {exc}") from None
