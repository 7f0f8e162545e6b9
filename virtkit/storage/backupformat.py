"""The layout of a virtkit backup archive (`virtkit export`) and the rules its manifest obeys.

A backup is one tar stream (plain, or compressed whole by zstd or gzip)::

    virtkit-backup.json        the manifest: format and version, the instance, its image, its
                               snapshots, and every disk, file and tree below with its size
    trees/image/...            the image the instance was made from (its whole directory)
    files/ID                   small files: UEFI variables, cloud-init inputs, raw disks
    disks/ID                   qcow2 disks with no backing file (see storage/backupdisk.py)
    trees/ID/...               a container's writable layer (and each snapshot's), ids as the
                               container sees them (0 is its root); in an incremental archive,
                               only what changed since the snapshot, what went listed in
                               files/upper.deleted (storage/treediff.py)
    virtkit-backup.sha256      the sha256 of the manifest, the digest of every tree, and (from
                               version 3) the sha256 of the archive's own bytes before the run
                               holding this list (storage/backupstored.py): from version 4, in a
                               zstd archive, less each big disk's and file's own zstd run, which
                               its frame's content checksum covers; versions 1 and 2 had the
                               sha256 of every disk's and file's content instead

The checksums come last because a tar stream cannot go back: they are computed while the data is
written, in one pass, without a temporary copy of every disk. The manifest says where they are.
An import reads the manifest first (refusing a future version, a bad name, an impossible size
before a byte of data is written), streams the data into a staging directory, and compares every
checksum before anything is registered.

IDs name a part of the archive (``root.qcow2@snap0``, ``upper``): a bare name, never a path. A
tree's digest covers each entry's path, type, mode, owner, times, link target, device numbers,
extended attributes and content (`entry_line`), so a tree arrives exactly as it left.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from virtkit.errors import RejectedError, SpecError
from virtkit.model import InstanceKind, Name, SnapshotPart
from virtkit.units import MiB

FORMAT = "virtkit-backup"
VERSION = 4  # the newest this virtkit reads, and the one it writes (1 to 3 are still read)
STORED_VERSION = 3  # from this version on: the stored digest, no sha256 of each disk and file
SKIPPED_VERSION = 4  # from this version on: the stored digest leaves out big parts' own zstd runs
OWN_RUN = 16 * MiB  # a disk or file from this size is compressed by a compressor run of its own
MAX_SKIPPED = 10_000  # as many as a manifest may list disks
MANIFEST = "virtkit-backup.json"
CHECKSUMS = "virtkit-backup.sha256"
MAX_MANIFEST = 1 * MiB  # a manifest names a few dozen parts: far below this
MAX_CHECKSUMS = 1 * MiB
DISKS, FILES, TREES = "disks", "files", "trees"
IMAGE_TREE = "image"
UPPER = "upper"
BASE_TREE = "base"  # a container's own whole tree under its writable layer (format version 2)
BASE_IMAGE = "image"  # a disk's base: the image's disk

PartId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_@-]*(\.[a-z0-9_@-]+)*$", max_length=128)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Size = Annotated[int, Field(ge=0, le=2**50)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NicEntry(_Strict):
    """A NIC without what belongs to one host (MAC, address, host device): made anew on import."""

    network: Name
    inner: str = Field(default="eth0", pattern=r"^eth[0-9]{1,2}$")
    model: str | None = Field(default=None, pattern=r"^(virtio|e1000)$")
    limit: int | None = Field(default=None, gt=0)
    allow_host: bool = False


class InstanceEntry(_Strict):
    """The instance's settings (its record without uuid, state, NIC addresses, volumes)."""

    name: Name
    kind: InstanceKind
    arch: str = Field(pattern=r"^[a-z0-9_]{1,32}$")
    cpus: float = Field(gt=0, le=1024)
    memory: int = Field(gt=0, le=2**50)
    config: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    nics: list[NicEntry] = Field(default_factory=list, max_length=32)
    uuid: str = Field(pattern=r"^[0-9a-f-]{36}$")  # the source's: tells its snapshots apart, never reused
    idmap: Literal["none", "idmapped", "metacopy", ""] = ""  # how a container's ids were shown


class ImageEntry(_Strict):
    """The image the instance was made from, carried whole (tree `image`): reused when the target
    has one with this fingerprint, else added to its image store."""

    fingerprint: Sha256
    name: str = Field(max_length=255)
    kinds: list[InstanceKind]
    arch: str = Field(pattern=r"^[a-z0-9_]{1,32}$")
    format: str = Field(max_length=64)
    virtual_size: Size = 0
    source: str = Field(default="", max_length=4096)
    aliases: list[Name] = Field(default_factory=list)
    files: dict[str, SnapshotPart] = Field(default_factory=dict)
    container: dict[str, Any] = Field(default_factory=dict)
    properties: dict[str, str] = Field(default_factory=dict)


class SnapshotEntry(_Strict):
    """A snapshot's record; `origin` identifies it across hosts (for `export --since`)."""

    name: Name
    created_at: float
    live: bool = False
    stateful: bool = False
    size: Size = 0
    disks: list[SnapshotPart] = Field(default_factory=list)
    files: list[SnapshotPart] = Field(default_factory=list)
    origin: str = Field(pattern=r"^[0-9a-f]{32}$")


class DiskEntry(_Strict):
    """One state of one qcow2 disk: `state` is a snapshot's name, or None for the disk as it is.
    `base` is what it holds the differences to: the image's disk, the previous state's ID, or
    None (it is whole)."""

    id: PartId
    file: SnapshotPart
    state: Name | None = None
    base: str | None = None
    size: Size
    virtual_size: Size


class FileEntry(_Strict):
    """A regular file of the instance (`state` None) or of a snapshot's directory; or (role
    `deleted`) the paths a container's incremental archive removes from its layer."""

    id: PartId
    file: SnapshotPart
    state: Name | None = None
    role: Literal["instance", "snapshot", "cloud-init", "deleted"] = "instance"
    size: Size


class TreeEntry(_Strict):
    """A directory tree: the image's, a container's writable layer (`state` as for disks), or the
    whole tree a container clone's layers make with its image, which it then rests on instead."""

    id: PartId
    role: Literal["image", "upper", "base"]
    state: Name | None = None
    entries: int = Field(ge=1, le=10_000_000)
    bytes: Size


class SinceEntry(_Strict):
    """What an incremental archive applies on top of: that snapshot of that instance."""

    snapshot: Name
    origin: str = Field(pattern=r"^[0-9a-f]{32}$")


class Manifest(_Strict):
    format: Literal["virtkit-backup"]
    version: int
    virtkit: str = Field(max_length=64)
    created_at: float
    instance: InstanceEntry
    image: ImageEntry | None = None
    snapshots: list[SnapshotEntry] = Field(default_factory=list, max_length=1000)
    disks: list[DiskEntry] = Field(default_factory=list, max_length=10_000)
    files: list[FileEntry] = Field(default_factory=list, max_length=10_000)
    trees: list[TreeEntry] = Field(default_factory=list, max_length=1000)
    since: SinceEntry | None = None
    checksums: Literal["virtkit-backup.sha256"] = "virtkit-backup.sha256"
    notes: list[str] = Field(default_factory=list, max_length=100)

    def member_names(self) -> dict[str, tuple[str, str]]:
        """Every disk and file member's archive name -> (kind, ID)."""
        names = {f"{DISKS}/{disk.id}": (DISKS, disk.id) for disk in self.disks}
        names.update({f"{FILES}/{file.id}": (FILES, file.id) for file in self.files})
        return names

    def declared_bytes(self) -> int:
        """What the data may add up to (each tree entry counted with a header's worth)."""
        data = sum(d.size for d in self.disks) + sum(f.size for f in self.files)
        return data + sum(t.bytes + t.entries * 4096 for t in self.trees)


class Stored(_Strict):
    """The sha256 of the archive file's first `bytes` bytes: all of it before the run holding the
    checksum list, less the `skipped` ranges [start, end) (version 4: each the zstd run of one disk
    or file of at least OWN_RUN bytes, covered by its frame's content checksum instead; none in a
    plain or gzip archive): storage/backupstored.py."""

    bytes: Size
    sha256: Sha256
    skipped: list[tuple[Size, Size]] | None = Field(default=None, max_length=MAX_SKIPPED)  # version 4


class Checksums(_Strict):
    manifest: Sha256
    disks: dict[str, Sha256] = Field(default_factory=dict)  # versions 1 and 2
    files: dict[str, Sha256] = Field(default_factory=dict)  # versions 1 and 2
    trees: dict[str, Sha256] = Field(default_factory=dict)
    stored: Stored | None = None  # from version 3


def parse_manifest(data: bytes, label: str) -> Manifest:
    """The manifest in `data`, checked: RejectedError for anything but a valid version-1 one."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RejectedError(f"archive {label} is refused: its manifest is not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise RejectedError(f"{label} is not a virtkit backup: its first member is not a virtkit manifest")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RejectedError(f"archive {label} is refused: its manifest has no valid format version")
    if version > VERSION:
        raise RejectedError(
            f"archive {label} is a virtkit backup of format version {version}, newer than this "
            f"virtkit reads (version {VERSION})",
            hint="import it with a newer virtkit",
        )
    try:
        manifest = Manifest.model_validate(document)
    except SpecError as exc:  # a name refused by its own validator
        raise RejectedError(f"archive {label} is refused: its manifest holds an {exc.message}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RejectedError(
            f"archive {label} is refused: its manifest is invalid at {where or 'the top'}: {first['msg']}"
        ) from None
    _check_unique(manifest, label)
    return manifest


def _check_unique(manifest: Manifest, label: str) -> None:
    """IDs used once; snapshots named once; every state names a snapshot of the manifest."""
    ids = [d.id for d in manifest.disks] + [f.id for f in manifest.files] + [t.id for t in manifest.trees]
    names = [s.name for s in manifest.snapshots]
    for what, listed in (("part", ids), ("snapshot", names)):
        seen: set[str] = set()
        for value in listed:
            if value in seen:
                raise RejectedError(f"archive {label} is refused: its manifest names {what} {value!r} twice")
            seen.add(value)
    states = [d.state for d in manifest.disks] + [f.state for f in manifest.files]
    states += [t.state for t in manifest.trees]
    for state in states:
        if state is not None and state not in names:
            raise RejectedError(f"archive {label} is refused: it has data of an unlisted snapshot {state!r}")
    bases = [t for t in manifest.trees if t.role == BASE_TREE]
    container = manifest.instance.kind is InstanceKind.CONTAINER
    if bases and (len(bases) > 1 or bases[0].id != BASE_TREE or bases[0].state is not None
                  or not container or manifest.version < 2):  # fmt: skip
        raise RejectedError(f"archive {label} is refused: its base tree does not fit its instance")
    images = [t for t in manifest.trees if t.role == IMAGE_TREE]
    if (manifest.image is None) != (not images) or len(images) > 1 or any(t.id != IMAGE_TREE for t in images):
        raise RejectedError(f"archive {label} is refused: its image and its image tree do not match")


def parse_checksums(data: bytes, label: str) -> Checksums:
    try:
        return Checksums.model_validate(json.loads(data))
    except (ValueError, UnicodeDecodeError, ValidationError):
        raise RejectedError(f"archive {label} is refused: its checksum list is not valid") from None


def entry_line(
    path: str, kind: str, mode: int, uid: int, gid: int, mtime: int, link: str, device: tuple[int, int],
    xattrs: dict[str, bytes], content: str,
) -> bytes:  # fmt: skip
    """One tree entry as its digest covers it (the same on both sides)."""
    attrs = ",".join(f"{name}={value.hex()}" for name, value in sorted(xattrs.items()))
    numbers = (f"{mode:o}", str(uid), str(gid), str(mtime))
    fields = (path, kind, *numbers, link, f"{device[0]}:{device[1]}", attrs, content)
    return ("\0".join(fields) + "\n").encode("utf-8", "surrogateescape")
