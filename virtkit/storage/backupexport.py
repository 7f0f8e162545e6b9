"""Gathering what a backup holds (every state of a VM's disks, a container's layers, the image) and
writing it: the manifest first, the data in one pass, the checksums last (storage/backupwrite.py).

Disks are converted into a private staging directory first (their sizes go in the manifest, which
comes before them); trees are walked once, their entries kept in memory, and read as they are
written. Nothing here takes locks or pauses anything: ops/backup.py hands over a consistent view
(a stopped instance, a temporary internal snapshot of a running VM, a copy of a paused
container's writable layer). An incremental export of a container carries its layer's file-level
difference to the snapshot's (`gather_tree_since`, storage/treediff.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from virtkit import __version__
from virtkit.errors import StateError
from virtkit.model import ImageRecord, InstanceRecord, SnapshotRecord
from virtkit.storage import backupdisk, treediff
from virtkit.storage.backupcache import TreeCache
from virtkit.storage.backupdisk import DiskSource
from virtkit.storage.backupformat import (
    BASE_IMAGE,
    DISKS,
    FILES,
    IMAGE_TREE,
    UPPER,
    VERSION,
    DiskEntry,
    FileEntry,
    ImageEntry,
    InstanceEntry,
    Manifest,
    NicEntry,
    SinceEntry,
    SnapshotEntry,
    TreeEntry,
)
from virtkit.storage.backuptree import UPPER_XATTRS, Entry, IdRange, Walk, walk
from virtkit.storage.backupwrite import ArchiveWriter
from virtkit.storage.snapshots import snapshot_dir

HOST_KEYS = ("iso",)  # settings naming a file of this host: not carried


def origin(uuid: str, snapshot: SnapshotRecord) -> str:
    """A snapshot's identity on any host: its instance's uuid, its name, when it was taken; for one
    imported from an archive, the identity it had there (so an incremental of an imported instance
    applies where the same archive was imported too)."""
    kept = snapshot.config.get("origin", "")
    if re.fullmatch(r"[0-9a-f]{32}", kept):
        return kept
    return hashlib.sha256(f"{uuid}\0{snapshot.name}\0{snapshot.created_at!r}".encode()).hexdigest()[:32]


@dataclass
class Parts:
    """The data of one archive, gathered: files to copy, trees to walk, what to tell the user."""

    disks: list[tuple[DiskEntry, Path]] = field(default_factory=list)
    files: list[tuple[FileEntry, Path]] = field(default_factory=list)
    trees: list[tuple[TreeEntry, list[Entry]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    heads: dict[str, bytes] = field(default_factory=dict)  # a disk streamed as it is: its new header


@dataclass(frozen=True)
class VmView:
    """A VM as export reads it: its directory, its qcow2 disks and whole-copied files (bare names),
    the image disk its root overlays, whether QEMU holds the disks, the internal snapshot holding
    its present (a running VM's temporary one; None: the disks as they are), and where the
    present's copied files are (`home`, or the temporary snapshot's directory)."""

    home: Path
    disks: tuple[str, ...]
    files: tuple[str, ...]
    image_disk: Path | None
    live: bool
    present: str | None = None
    present_files: Path | None = None


def gather_vm(view: VmView, snapshots: list[SnapshotRecord], staging: Path, root: Path, parts: Parts,
              since: SnapshotRecord | None = None) -> None:  # fmt: skip
    """Every state of every disk (snapshots oldest first, then the present) as differences to the
    one before; with `since`, only the present's differences to that snapshot."""
    for disk in view.disks:
        source = DiskSource.of(view.home / disk, view.image_disk, root, view.live)
        states: list[str | None] = [s.name for s in snapshots if disk in s.disks]
        if since is not None:
            states = [since.name]
        states.append(None)
        if states == [None] and not view.live and _stream_as_is(source, disk, parts):
            continue
        _disk_states(source, disk, states, view.present, staging, parts, skip_first=since is not None)
    for file in view.files:
        for snapshot in snapshots if since is None else []:
            if file in snapshot.files:
                path = snapshot_dir(view.home, snapshot.name) / file
                entry = FileEntry(id=f"{file}@{snapshot.name}", file=file, state=snapshot.name,
                                  role="snapshot", size=os.lstat(path).st_size)  # fmt: skip
                parts.files.append((entry, path))
        path = (view.present_files or view.home) / file
        parts.files.append((FileEntry(id=file, file=file, size=os.lstat(path).st_size), path))


def _stream_as_is(source: DiskSource, disk: str, parts: Parts) -> bool:
    """A stopped VM's disk with no snapshot at all, over its image or whole: the file itself is
    what `convert` would make (only what the VM wrote), so it is streamed as it is, its header
    rewritten on the way to name no backing file. Whether it could be."""
    if source.chain:
        return False
    fd = os.open(source.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        unlinked = backupdisk.unlinked_header(os.pread(fd, 1 << 21, 0))
    finally:
        os.close(fd)
    if unlinked is None:
        return False
    head, virtual = unlinked
    base = BASE_IMAGE if source.base is not None else None
    entry = DiskEntry(id=disk, file=disk, base=base, size=size, virtual_size=virtual)
    parts.disks.append((entry, source.path))
    parts.heads[disk] = head
    return True


def _disk_states(source: DiskSource, disk: str, states: list[str | None], present: str | None,
                 staging: Path, parts: Parts, *, skip_first: bool) -> None:  # fmt: skip
    """Convert each state whole, keep the first (unless `skip_first`: an incremental's base, on
    the other side already) and the differences of each to the one before."""
    made: list[tuple[str, str | None, str | None, Path, int]] = []  # part, state, base, file, size
    previous: tuple[Path, str] | None = None  # the last state's whole file and part id
    for state in states:
        part = f"{disk}@{state}" if state is not None else disk
        whole = staging / f"{part}.whole"
        backupdisk.convert_state(source, state if state is not None else present, whole)
        size = backupdisk.virtual_size(whole)
        if previous is None:
            if not skip_first:
                made.append((part, state, BASE_IMAGE if source.base is not None else None, whole, size))
        else:
            out = staging / part
            backupdisk.delta(whole, previous[0], out)
            made.append((part, state, previous[1], out, size))
        if previous is not None and all(previous[0] != kept[3] for kept in made):
            previous[0].unlink()
        previous = (whole, part)
    if previous is not None and all(previous[0] != kept[3] for kept in made):
        previous[0].unlink()
    for part, state, base, path, size in made:
        backupdisk.set_backing(path, None)  # a disk in a backup names no other file
        entry = DiskEntry(id=part, file=disk, state=state, base=base, size=os.lstat(path).st_size,
                          virtual_size=size)  # fmt: skip
        parts.disks.append((entry, path))


def gather_tree(part: str, role: str, top: Path, state: str | None, parts: Parts, *,
                ids: IdRange | None = None, lower: Path | None = None) -> None:  # fmt: skip
    """The tree at `top` as tree `part` (a container's layer with `ids` and `lower`, or the image)."""
    report = Walk()
    allowed = UPPER_XATTRS if role == UPPER else frozenset({"security.capability"})
    entries = list(walk(top, ids=ids, lower=lower, allowed=allowed, report=report))
    size = sum(e.info.size for e in entries if e.info.isreg())
    tree = TreeEntry(id=part, role=role, state=state, entries=len(entries), bytes=size)  # type: ignore[arg-type]
    parts.trees.append((tree, entries))
    parts.notes += report.notes(part)


def gather_tree_since(top: Path, base: Path, since: str, staging: Path, parts: Parts, *,
                      ids: IdRange | None = None, lower: Path | None = None) -> None:  # fmt: skip
    """A container's layer at `top` as its difference to snapshot `since`'s layer at `base`
    (storage/treediff.py): tree `upper` with what is new or changed, file part DELETED listing
    what is gone (written into `staging`)."""
    if not base.is_dir() or base.is_symlink():
        raise StateError(f"snapshot {since} has lost its data: {base} is missing",
                         hint="export the container whole, or since another snapshot")  # fmt: skip
    report = Walk()
    changes = treediff.diff(base, top, ids=ids, lower=lower, report=report)
    size = sum(e.info.size for e in changes.entries if e.info.isreg())
    tree = TreeEntry(id=UPPER, role=UPPER, entries=len(changes.entries), bytes=size)  # type: ignore[arg-type]
    parts.trees.append((tree, changes.entries))
    listed = staging / treediff.DELETED
    fd = os.open(listed, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(treediff.encode_deleted(changes.deleted))
    entry = FileEntry(id=treediff.DELETED, file=treediff.DELETED, role="deleted",
                      size=os.lstat(listed).st_size)  # fmt: skip
    parts.files.append((entry, listed))
    parts.notes.append(f"{UPPER}: {changes.changed} entries new or changed and {len(changes.deleted)} "
                       f"deleted since snapshot {since}")  # fmt: skip
    parts.notes += report.notes(UPPER)


def instance_entry(record: InstanceRecord, idmap: str, notes: list[str]) -> InstanceEntry:
    """The record without what belongs to this host."""
    config = dict(record.config)
    for key in HOST_KEYS:
        if config.pop(key, None) is not None:
            notes.append(f"setting {key} names a file of this host: left out")
    if record.volumes:
        names = ", ".join(f"{v.pool}/{v.name}" for v in record.volumes)
        notes.append(f"attached volumes are not part of the backup (export them on their own): {names}")
    nics = [NicEntry(network=n.network, inner=n.inner, model=n.model, limit=n.limit, allow_host=n.allow_host)
            for n in record.nics]  # fmt: skip
    return InstanceEntry(name=record.name, kind=record.kind, arch=record.arch, cpus=record.cpus,
                         memory=record.memory, config=config, labels=dict(record.labels), nics=nics,
                         uuid=record.uuid, idmap=idmap)  # type: ignore[arg-type]  # fmt: skip


def image_entry(image: ImageRecord) -> ImageEntry:
    return ImageEntry(fingerprint=image.fingerprint, name=image.name, kinds=list(image.kinds),
                      arch=image.arch, format=image.format, virtual_size=image.virtual_size,
                      source=image.source, aliases=list(image.aliases), files=dict(image.files),
                      container=dict(image.container), properties=dict(image.properties))  # fmt: skip


def snapshot_entries(uuid: str, snapshots: list[SnapshotRecord]) -> list[SnapshotEntry]:
    return [SnapshotEntry(name=s.name, created_at=s.created_at, live=s.live, stateful=s.stateful, size=s.size,
                          disks=list(s.disks), files=list(s.files), origin=origin(uuid, s))
            for s in snapshots]  # fmt: skip


def manifest(instance: InstanceEntry, image: ImageEntry | None, snapshots: list[SnapshotEntry], parts: Parts,
             since: SinceEntry | None = None) -> Manifest:  # fmt: skip
    return Manifest(format="virtkit-backup", version=VERSION, virtkit=__version__, created_at=time.time(),
                    instance=instance, image=image, snapshots=snapshots, since=since,
                    disks=[d for d, _ in parts.disks], files=[f for f, _ in parts.files],
                    trees=[t for t, _ in parts.trees], notes=parts.notes[:100])  # fmt: skip


def write(dest: Path, compression: str, document: Manifest, parts: Parts, image_cache: TreeCache | None = None
          ) -> Path:  # fmt: skip
    """The archive at `dest`: manifest, image (its compressed form from `image_cache` when kept
    there: storage/backupcache.py), files, disks, layers, checksums. The files and disks are
    opened before anything is written (ops/backup.py hands over a stopped instance's files or
    staged copies: they do not change meanwhile)."""
    with contextlib.ExitStack() as stack:
        listed: list[tuple[str, FileEntry | DiskEntry, int]] = []
        for kind, entries in ((FILES, parts.files), (DISKS, parts.disks)):
            for entry, path in entries:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                stack.callback(os.close, fd)
                listed.append((kind, entry, fd))
        writer = ArchiveWriter(dest, compression)  # closed or aborted before the files are
        try:
            writer.add_manifest(document.model_dump(mode="json"))
            ordered = sorted(parts.trees, key=lambda tree: tree[0].id != IMAGE_TREE)
            for tree, tree_entries in ordered[:1] if ordered and ordered[0][0].id == IMAGE_TREE else []:
                writer.add_tree(tree.id, tree_entries, image_cache)
            for kind, entry, fd in listed:
                writer.add_file(kind, entry.id, fd, entry.size, parts.heads.get(entry.id, b""))
            for tree, tree_entries in ordered:
                if tree.id != IMAGE_TREE:
                    writer.add_tree(tree.id, tree_entries)
            return writer.close()
        except BaseException:
            writer.abort()
            raise
