"""Backups: `export` an instance to a portable archive, `import` one here (design: docs/backups.md).

Export holds the instance's lock throughout and reads a consistent view of it: a stopped instance
as it is; a running (or paused) VM through a temporary internal snapshot of its disks (taken by
QEMU atomically, the UEFI variables copied with the vCPUs paused: storage/vmsnap.py), deleted
again afterwards; a running container frozen while its writable layer is copied (as a snapshot
is), then thawed. Both are consistent as after a power cut. The archive carries the instance's
image, so it restores on a host that never had it.

Import reads the whole archive into a staging directory under the state root and checks all of
it (storage/backupread.py, storage/backupplace.py) before it registers anything. Then, under the
new instance's lock: the image (the target's own if it has one with the same fingerprint, else
the carried one, added to its image store), the record (a new UUID; NICs only on networks of the
same name here, with new MACs and addresses), the driver's files (as `create` makes them), the
imported disks and layers in their place, the saved runtime, the snapshots. A failure at any step
removes all of it; the staging directory goes in every case.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from virtkit import cloudinit
from virtkit.drivers.base import InstancePaths, get_driver
from virtkit.errors import (
    ConflictError,
    NotFoundError,
    RejectedError,
    SpecError,
    StateError,
    VirtkitError,
    host_errors,
)
from virtkit.images.staged import DISK, ROLES, StagedImage
from virtkit.images.store import ImageStore, fingerprint_files
from virtkit.model import (
    ImageRecord,
    InstanceKind,
    InstanceRecord,
    NetworkRecord,
    SnapshotRecord,
)
from virtkit.ops import backupcontainer
from virtkit.ops.lifecycle import DriverFor
from virtkit.ops.networks import Networks
from virtkit.ops.nics import NicRequest, Nics
from virtkit.ops.snapshots import Snapshots, backend_for
from virtkit.storage import backupcache, backupexport, backupplace, backupread
from virtkit.storage.archive import remove_tree
from virtkit.storage.backupcache import TreeCache
from virtkit.storage.backupexport import Parts, VmView
from virtkit.storage.backupformat import (
    IMAGE_TREE,
    DiskEntry,
    FileEntry,
    Manifest,
    SinceEntry,
)
from virtkit.storage.backupwrite import COMPRESSIONS
from virtkit.storage.snapshots import sweep
from virtkit.store import Store, atomic_write
from virtkit.store.files import temp_name
from virtkit.units import format_size, validate_name

log = logging.getLogger(__name__)

STAGING = "staging"  # ROOT/staging/: exports' converted disks, imports' unpacked archives
EXPORT_CACHE = "cache/exports"  # ROOT/cache/exports/: images' compressed trees (storage/backupcache.py)
PRESENT = ".vk-export"  # a running VM's temporary internal snapshot (no snapshot name starts with ".")
CLOUD_INIT = "cloud-init."  # file IDs of the instance's cloud-init inputs


@dataclass(frozen=True)
class Exported:
    path: Path
    manifest: Manifest
    size: int


@dataclass(frozen=True)
class Imported:
    record: InstanceRecord
    notes: list[str] = field(default_factory=list)
    image: str = ""  # the image's fingerprint, and whether it was added here
    image_added: bool = False


class Backups:
    """Export and import over one state root."""

    def __init__(self, root: Path, store: Store, drivers: DriverFor = get_driver) -> None:
        self.root, self.store, self.drivers = root, store, drivers
        self.images = ImageStore(root, store)

    # --- staging ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _staging(self, what: str) -> Iterator[Path]:
        top = self.root / STAGING
        top.mkdir(mode=0o700, parents=True, exist_ok=True)
        sweep(top)  # what a killed virtkit left
        path = top / temp_name(what)
        os.mkdir(path, 0o700)
        try:
            yield path
        finally:
            remove_tree(path)
            with contextlib.suppress(OSError):
                top.rmdir()

    # --- export -----------------------------------------------------------------------------------

    def export(self, name: str, dest: Path, *, compression: str = "zstd", instance_only: bool = False,
               since: str | None = None) -> Exported:  # fmt: skip
        """Write instance `name` to the archive `dest` (refused if it exists)."""
        if compression not in COMPRESSIONS:
            raise SpecError(f"invalid compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
        wanted = validate_name(name)
        with self.store.lock("instance", wanted), host_errors(f"exporting {wanted}"):
            record = self.store.get(InstanceRecord, wanted)
            image = self._image_of(record)
            snapshots = Snapshots(self.root, self.store, self.drivers).list(record.name)
            base = self._since(record, snapshots, since)
            chosen = [] if instance_only or base is not None else snapshots
            parts = Parts()
            with self._staging("export") as staging:
                if record.kind is InstanceKind.VM:
                    with self._vm_view(record, image, staging, parts.notes) as view:
                        backupexport.gather_vm(view, chosen, staging, self.root, parts, since=base)
                    idmap = ""
                else:
                    idmap = backupcontainer.gather(self, record, image, chosen, staging, parts, since=base)
                self._cloud_init(record, parts)
                if base is None:  # an incremental goes onto an instance that has its image already
                    backupexport.gather_tree(IMAGE_TREE, "image", self.images.path(image), None, parts)
                instance = backupexport.instance_entry(record, idmap, parts.notes)
                since_entry = None
                if base is not None:
                    since_entry = SinceEntry(snapshot=base.name,
                                             origin=backupexport.origin(record.uuid, base))  # fmt: skip
                carried = backupexport.image_entry(image) if base is None else None
                document = backupexport.manifest(instance, carried,
                                                 backupexport.snapshot_entries(record.uuid, chosen), parts,
                                                 since_entry)  # fmt: skip
                path = backupexport.write(dest, compression, document, parts, self._image_cache(image))
        return Exported(path, document, path.stat().st_size)

    def _image_cache(self, image: ImageRecord) -> TreeCache:
        """Where the compressed form of `image`'s tree is kept between exports; entries of images
        that are gone are removed first."""
        directory = self.root / EXPORT_CACHE
        backupcache.sweep(directory, {i.fingerprint for i in self.store.list(ImageRecord)})
        return TreeCache(directory, image.fingerprint)

    def _image_of(self, record: InstanceRecord) -> ImageRecord:
        image = self.store.find(ImageRecord, record.image) if record.image else None
        if image is None:
            raise StateError(
                f"the image instance {record.name!r} was made from is no longer here",
                hint="a backup carries its instance's image: import or build that image again first",
            )
        return image

    def _since(self, record: InstanceRecord, snapshots: list[SnapshotRecord], since: str | None
               ) -> SnapshotRecord | None:  # fmt: skip
        if since is None:
            return None
        found = next((s for s in snapshots if s.name == validate_name(since, what="snapshot name")), None)
        if found is None:
            raise NotFoundError(f"snapshot {since!r} of instance {record.name!r} not found")
        return found

    @contextlib.contextmanager
    def _vm_view(self, record: InstanceRecord, image: ImageRecord, staging: Path,
                 notes: list[str]) -> Iterator[VmView]:  # fmt: skip
        """The VM's disks as export reads them; a running one's present held by a temporary snapshot,
        taken with the guest's filesystems frozen where its agent can (what was done: `notes`)."""
        driver, paths = self.drivers(record.kind), InstancePaths.of(self.root, record.name)
        live = driver.status(record, paths).pid is not None
        backend = backend_for(record, paths, live)
        disks, files = tuple(getattr(backend, "disks", ())), tuple(getattr(backend, "files", ()))
        image_disk = self.images.path(image) / image.files[DISK] if DISK in image.files else None
        if not live or not (disks or files):
            yield VmView(paths.dir, disks, files, image_disk, live)
            return
        into = staging / "present"
        into.mkdir(mode=0o700)
        backend.forget(PRESENT)
        freeze = getattr(driver, "frozen", None)
        with freeze(record, paths) if freeze is not None else contextlib.nullcontext("") as note:
            captured = backend.capture(PRESENT, into)
        if note:
            notes.append(note)
        try:
            yield VmView(paths.dir, disks, files, image_disk, True, PRESENT, into)
        finally:
            still = driver.status(record, paths).pid is not None
            try:
                backend_for(record, paths, still).remove(PRESENT, captured)
            except VirtkitError as exc:
                log.error("cannot remove the temporary snapshot %s of %s: %s", PRESENT, record.name, exc)

    def _cloud_init(self, record: InstanceRecord, parts: Parts) -> None:
        directory = InstancePaths.of(self.root, record.name).dir / cloudinit.INPUT_DIR
        for bare in (cloudinit.USER_DATA_FILE, cloudinit.SSH_KEYS_FILE):
            path = directory / bare
            if path.is_file() and not path.is_symlink():
                size = path.stat().st_size
                entry = FileEntry(id=CLOUD_INIT + bare, file=bare, role="cloud-init", size=size)
                parts.files.append((entry, path))

    # --- import -----------------------------------------------------------------------------------

    def import_archive(self, source: Path, name: str | None = None, *, identity: bool = False,
                       nics: Sequence[NicRequest] = ()) -> Imported:  # fmt: skip
        """Restore the archive at `source` as a new instance (named as in it, or `name`). With
        `identity` (a cold move: ops/movecold.py) it keeps the archive's UUID, and `nics` (one per
        archived NIC, in order) say the network, MAC and address each NIC gets here."""
        target = validate_name(name) if name is not None else None
        label = source.name
        with host_errors(f"importing {label}"), self._staging("import") as staging:
            chosen: list[str] = []

            def check(manifest: Manifest) -> None:
                chosen.append(self._check_new(manifest, target, label))

            staged = backupread.read(source, staging, label=label, check=check)
            manifest = staged.manifest
            plans = backupplace.disk_plan(manifest, label)
            backupplace.check_disks(manifest, staged)
            if manifest.since is not None:
                from virtkit.ops.backupsince import apply_incremental

                record = apply_incremental(self, staged, plans, chosen[0], label)
                return Imported(record, [f"applied the changes since snapshot {manifest.since.snapshot}"])
            return self._register(staged, plans, chosen[0], label, identity=identity, nics=nics)

    def _check_new(self, manifest: Manifest, target: str | None, label: str) -> str:
        """The instance name to import as (checked before any data is read)."""
        final = target or manifest.instance.name
        if manifest.since is not None:  # an incremental goes on top of an instance that exists
            self.store.get(InstanceRecord, final)
        elif self.store.find(InstanceRecord, final) is not None:
            raise ConflictError(
                f"instance {final!r} already exists",
                hint=f"import it under another name: virtkit import {label} NEW-NAME",
            )
        image = manifest.image
        if manifest.since is None and (image is None or manifest.instance.kind not in image.kinds):
            raise RejectedError(f"archive {label} is refused: it carries no image this instance can run from")
        need = manifest.declared_bytes()
        free = shutil.disk_usage(self.root).free
        if need > free:
            raise StateError(f"importing {label} needs up to {format_size(need)}; {self.root} has "
                             f"{format_size(free)} free")  # fmt: skip
        return final

    def _register(self, staged: backupread.Staged, plans: dict[str, list[DiskEntry]], name: str,
                  label: str, *, identity: bool = False,
                  nics: Sequence[NicRequest] = ()) -> Imported:  # fmt: skip
        manifest = staged.manifest
        notes: list[str] = []
        with self.store.lock("instance", name):
            if self.store.find(InstanceRecord, name) is not None:
                raise ConflictError(f"instance {name!r} already exists")
            image, added = self._image(staged, label)
            try:
                image_dir = self.images.path(image)
                base = image_dir / image.files[DISK] if DISK in image.files else None
                built = backupplace.rebuild(plans, staged, base)
                whole = bool(plans) and all(states[0].base is None for states in plans.values())
                record = self._record(manifest, name, image, notes, whole=whole, identity=identity,
                                      given=nics)  # fmt: skip
                self._make(record, image, staged, built, notes)
            except BaseException:
                if added:
                    with contextlib.suppress(VirtkitError, OSError):
                        self.images.delete(image.fingerprint)
                raise
        return Imported(record, notes, image.fingerprint, added)

    def _image(self, staged: backupread.Staged, label: str) -> tuple[ImageRecord, bool]:
        """The target's image with the archive's fingerprint, else the carried one, added."""
        entry = staged.manifest.image
        assert entry is not None
        tree = staged.trees[IMAGE_TREE]
        existing = self.store.find(ImageRecord, entry.fingerprint)
        complete = set(entry.files) <= set(ROLES) and all((tree / f).exists() for f in entry.files.values())
        if existing is None and complete:  # the same content under another fingerprint: devices left out
            existing = self.store.find(ImageRecord, fingerprint_files(tree, dict(entry.files)))
        if existing is not None:
            return existing, False
        if DISK in entry.files:
            from virtkit.storage.backupdisk import check_part

            disk = entry.files[DISK]
            check_part(tree / disk, f"the image's {disk} (in {label})", entry.virtual_size)
        staged_image = StagedImage(
            name=entry.name, kinds=[k.value for k in entry.kinds], arch=entry.arch, format=entry.format,
            source=f"imported with an instance: {label} ({entry.source})"[:4096], files=dict(entry.files),
            virtual_size=entry.virtual_size, properties=dict(entry.properties),
            container=dict(entry.container),
        )  # fmt: skip
        self.images.dir.mkdir(parents=True, exist_ok=True)
        try:
            record = self.images.commit(staged_image, tree, alias=self._free_alias(entry.aliases, entry.name))
        except ValueError as exc:  # a role naming a file the tree does not have
            raise RejectedError(f"archive {label} is refused: its image is incomplete ({exc})") from None
        finally:
            with contextlib.suppress(OSError):
                self.images.dir.rmdir()  # a first image that did not come
        return record, True

    def _free_alias(self, aliases: list[str], name: str) -> str:
        taken = {alias for image in self.store.list(ImageRecord) for alias in image.aliases}
        first = aliases[0] if aliases else name
        for candidate in [*aliases, *(f"{first}-imported{n or ''}" for n in range(100))]:
            with contextlib.suppress(SpecError):
                if validate_name(candidate[:63].rstrip("-"), what="image alias") not in taken:
                    return candidate[:63].rstrip("-")
        return f"imported-{os.urandom(4).hex()}"

    def _record(self, manifest: Manifest, name: str, image: ImageRecord, notes: list[str], *,
                whole: bool, identity: bool = False,
                given: Sequence[NicRequest] = ()) -> InstanceRecord:  # fmt: skip
        """The new record, stored with its NICs (kept on networks of the same name here). `whole`: its
        disks rest on no image disk (a linked clone's, exported whole), as the record then says."""
        entry = manifest.instance
        record = InstanceRecord(name=name, kind=entry.kind, image=image.fingerprint, arch=entry.arch,
                                cpus=entry.cpus, memory=entry.memory, config=dict(entry.config),
                                labels=dict(entry.labels))  # fmt: skip
        if identity:
            if any(other.uuid == entry.uuid for other in self.store.list(InstanceRecord)):
                raise ConflictError(f"an instance with UUID {entry.uuid} exists here already")
            record.uuid = entry.uuid
        if whole and entry.kind is InstanceKind.VM and "base" in InstanceRecord.model_fields:
            record = record.model_copy(update={"base": "own"})
        requests = []
        for index, nic in enumerate(entry.nics):
            wanted = given[index] if index < len(given) else NicRequest(network=nic.network)
            if wanted.network == "default" or self.store.find(NetworkRecord, wanted.network) is not None:
                requests.append(NicRequest(network=wanted.network, limit=nic.limit, model=nic.model,
                                           mac=wanted.mac, ip=wanted.ip))  # fmt: skip
            else:
                notes.append(f"its NIC on network {wanted.network!r} was dropped: "
                             "there is no such network here")  # fmt: skip
        nics = Nics(Networks(self.root, self.store))
        if not requests:
            return self.store.create(record)
        with nics.networks.lock():
            record.nics = nics.allocate(record, requests, allow_host=any(n.allow_host for n in entry.nics))
            record = self.store.create(record)
        for network in sorted({nic.network for nic in record.nics}):
            nics.networks.reload(network)
        return record

    def _make(self, record: InstanceRecord, image: ImageRecord, staged: backupread.Staged,
              built: dict[str, Path], notes: list[str]) -> None:  # fmt: skip
        """The instance's files, its runtime and its snapshots; all of it removed on failure."""
        driver, paths = self.drivers(record.kind), InstancePaths.of(self.root, record.name)
        manifest = staged.manifest
        try:
            if paths.dir.exists():  # left by a crash: no record owns it, since ours is new
                shutil.rmtree(paths.dir)
            paths.dir.mkdir(parents=True, mode=0o750)
            self._cloud_init_back(manifest, staged, paths)
            image_dir = self.images.path(image)
            driver.prepare(record, image, image_dir, paths)
            snapshot_files: dict[str, dict[str, Path]] = {s.name: {} for s in manifest.snapshots}
            if record.kind is InstanceKind.VM:
                self._vm_files(manifest, staged, built, paths, snapshot_files)
            else:
                backupcontainer.place(self, record, image, staged, paths, snapshot_files)
            runtime = driver.generate(record, image, image_dir, paths)
            atomic_write(paths.runtime, json.dumps(runtime.to_dict(), indent=2))
            self._snapshots(record, manifest, paths, snapshot_files, notes)
        except BaseException:
            self._undo(record, paths)
            raise

    @staticmethod
    def _cloud_init_back(manifest: Manifest, staged: backupread.Staged, paths: InstancePaths) -> None:
        inputs = [f for f in manifest.files if f.role == "cloud-init"]
        if not inputs:
            return
        directory = paths.dir / cloudinit.INPUT_DIR
        directory.mkdir(mode=0o700)
        for entry in inputs:
            if entry.file in (cloudinit.USER_DATA_FILE, cloudinit.SSH_KEYS_FILE):
                os.rename(staged.parts[entry.id], directory / entry.file)

    @staticmethod
    def _vm_files(manifest: Manifest, staged: backupread.Staged, built: dict[str, Path], paths: InstancePaths,
                  snapshot_files: dict[str, dict[str, Path]]) -> None:  # fmt: skip
        for file, path in built.items():
            backupplace.put(path, paths.dir / file)
        for entry in manifest.files:
            if entry.role == "instance":
                backupplace.put(staged.parts[entry.id], paths.dir / entry.file)
            elif entry.role == "snapshot" and entry.state is not None:
                snapshot_files[entry.state][entry.file] = staged.parts[entry.id]

    def _snapshots(self, record: InstanceRecord, manifest: Manifest, paths: InstancePaths,
                   snapshot_files: dict[str, dict[str, Path]], notes: list[str]) -> None:  # fmt: skip
        for entry in manifest.snapshots:
            backupplace.snapshot_home(paths.dir, entry.name, snapshot_files.get(entry.name, {}))
            if entry.stateful:
                notes.append(f"snapshot {entry.name} comes back disk-only: memory state is not carried")
            self.store.create(SnapshotRecord(
                instance=record.name, name=entry.name, created_at=entry.created_at, size=entry.size,
                disks=list(entry.disks), files=list(entry.files), live=entry.live or entry.stateful,
                config={"origin": entry.origin},
            ))  # fmt: skip

    def _undo(self, record: InstanceRecord, paths: InstancePaths) -> None:
        for snapshot in self.store.list(SnapshotRecord, instance=record.name):
            self.store.delete(SnapshotRecord, record.name, snapshot.name)
        if paths.dir.exists():
            with contextlib.suppress(VirtkitError):
                self.drivers(record.kind).cleanup(record, paths)
            shutil.rmtree(paths.dir, ignore_errors=True)
        if self.store.find(InstanceRecord, record.name) is not None:
            self.store.delete(InstanceRecord, record.name)
        Nics(Networks(self.root, self.store)).forget(record)
        instances = paths.dir.parent
        with contextlib.suppress(OSError):
            instances.rmdir()
