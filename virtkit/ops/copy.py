"""Copies of instances: linked clones (instant, on shared read-only layers), full copies, copies of
a snapshot, and flattening a clone off its layers (design: docs/clones.md).

- Linked (default): the stopped source's own top (root.qcow2, upper/) is frozen into a new shared
  layer by a rename, whatever its size; the source and the clone each get a new empty top on it.
  Nothing shared is ever written again, so the two diverge independently. The source must be
  stopped. A source with snapshots is not frozen (they are bound to its top): what its top holds
  is copied into the clone's own new layer over the source's chain instead, as for a snapshot.
- `--snapshot SNAP`: the snapshot's own data is copied into a new layer over the source's chain
  (the source is not touched: it may be running, keep its snapshots).
- `--full`: an independent copy of the stopped source (or of its snapshot) resting on no layer.
- Each clone is a new instance: new UUID, new MACs and addresses on the same networks, its name
  as hostname, cloud-init's instance-id (its UUID) new, its machine-id cleared. Volumes and port
  forwards stay with the source.
- `flatten`: a clone's chain rewritten into a standalone disk or tree; it then uses no layer.

Every verb holds the instances' locks (source, then clone, ordered by name) and then the layers
lock; a failure undoes each step in reverse (the source's frozen top is put back in place).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from virtkit import cloudinit
from virtkit.drivers.base import InstancePaths, get_driver
from virtkit.errors import ConflictError, StateError, host_errors
from virtkit.images.store import ImageStore
from virtkit.model import (
    ImageRecord,
    InstanceKind,
    InstanceRecord,
    InstanceState,
    SnapshotRecord,
    validate_name,
)
from virtkit.ops.chains import Chain, chain_for
from virtkit.ops.lifecycle import DriverFor, Lifecycle, Request
from virtkit.ops.nics import NicRequest
from virtkit.storage import layers
from virtkit.store import Store, atomic_write

log = logging.getLogger(__name__)

ChainFor = Callable[[InstanceKind], Chain]
MODES = ("linked", "full")


@dataclass(frozen=True)
class Copied:
    """What `copy` made: the clone's record, how (linked or full), the layer ids it rests on, and
    what to tell the user."""

    record: InstanceRecord
    mode: str
    layers: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {"instance": self.record.model_dump(mode="json"), "mode": self.mode,
                "layers": list(self.layers), "notes": list(self.notes)}  # fmt: skip


class Copies:
    """The copy verbs over one state root."""

    def __init__(
        self, root: Path, store: Store, drivers: DriverFor = get_driver, chains: ChainFor = chain_for
    ) -> None:
        self.root = root
        self.store = store
        self.drivers = drivers
        self.chains = chains
        self.lifecycle = Lifecycle(root, store, drivers)

    def paths(self, name: str) -> InstancePaths:
        return InstancePaths.of(self.root, name)

    def images(self) -> ImageStore:
        from virtkit.ops.images import image_store

        return image_store(self.root, self.store)

    # --- copy -----------------------------------------------------------------------------------

    def copy(self, source: str, target: str, *, snapshot: str | None = None, full: bool = False) -> Copied:
        """Copy instance `source` to a new instance `target` (see the module docstring)."""
        src_name = validate_name(source)
        dst_name = validate_name(target, what="new instance name")
        snap = validate_name(snapshot, what="snapshot name") if snapshot is not None else None
        self.check(src_name, dst_name, snapshot=snap)  # before the locks: a typo never waits
        with self._locked(src_name, dst_name), host_errors(f"copying {src_name} to {dst_name}"):
            record = self.check(src_name, dst_name, snapshot=snap)  # again, now under them
            image = self.images().store.get(ImageRecord, record.image or "")
            image_dir = self.images().path(image)
            if full:
                return self._full(record, dst_name, snap, image, image_dir)
            return self._linked(record, dst_name, snap, image, image_dir)

    def _linked(self, record: InstanceRecord, target: str, snap: str | None, image: ImageRecord,
                image_dir: Path) -> Copied:  # fmt: skip
        chain, paths = self.chains(record.kind), self.paths(record.name)
        before = record.model_copy(deep=True)
        made = [layers.new_id(), layers.new_id()]
        chained, base, frozen = self._layers_for(record, snap, image, image_dir, made)
        fresh = [layer for layer in chained if layer in made]
        try:
            for layer in fresh:
                standalone = base == "layer" and layer == chained[-1]
                layers.write_meta(self.root, layers.stamp(record, layer, standalone=standalone))
            if frozen:
                record.layers, record.base = list(chained), base
                self._save_runtime(record, image, image_dir)
                self.store.put(record)
            clone, notes = self._make_clone(
                before, target, chained, base, image, image_dir, snap,
                lambda rec, where: chain.linked(before, paths, where),
            )  # fmt: skip
        except BaseException:
            if frozen:
                self._quietly(lambda: self._put_back(before, chain, chained, image, image_dir))
            self._quietly(lambda: self._drop_fresh(fresh, record.kind))
            raise
        if fresh and not frozen and snap is None:
            taken = ", ".join(s.name for s in self.store.list(SnapshotRecord, instance=before.name))
            notes.append(f"{before.name} has snapshots ({taken}): what its top holds was copied into "
                         f"{target}'s own layer instead of frozen, and {before.name} keeps them")  # fmt: skip
        return Copied(clone, "linked", tuple(chained), tuple(notes))

    def _layers_for(self, record: InstanceRecord, snap: str | None, image: ImageRecord, image_dir: Path,
                    made: list[str]) -> tuple[list[str], str, bool]:  # fmt: skip
        """The layers a linked clone of `record` rests on, their base, and whether the source's top
        was frozen for it: a snapshot's data goes into a new layer over the source's chain; a top
        that holds nothing yet (a template cloned again) is not frozen, its chain is shared as it is."""
        chain, paths = self.chains(record.kind), self.paths(record.name)
        if snap is not None:
            layers.layers_dir(self.root)
            chain.extract(record, paths, image, image_dir, snap, made[0])
            return [made[0], *record.layers], record.base, False
        if record.base != "own" and chain.empty(record, paths, image, image_dir):  # own: not shareable
            return list(record.layers), record.base, False
        layers.layers_dir(self.root)
        if self.store.list(SnapshotRecord, instance=record.name):  # they stay bound to its top
            chain.extract(record, paths, image, image_dir, None, made[0])
            return [made[0], *record.layers], record.base, False
        chained, base = chain.freeze(record, paths, image, image_dir, made)
        return chained, base, True

    def _put_back(self, before: InstanceRecord, chain: Chain, chained: list[str], image: ImageRecord,
                  image_dir: Path) -> None:  # fmt: skip
        """Undo a freeze: the source's old top back in place, its record and runtime as they were."""
        paths = self.paths(before.name)
        chain.unfreeze(before, paths, chained)
        self.store.put(before)
        self._save_runtime(before, image, image_dir)

    def _drop_fresh(self, fresh: list[str], kind: InstanceKind) -> None:
        """Remove the layers this copy made (what unfreeze moved back is gone already)."""
        from virtkit.storage.archive import remove_tree

        for layer in fresh:
            for path in (
                layers.layer_path(self.root, layer, kind),
                self.root / layers.LAYERS_DIR / f"{layer}.json",
            ):
                remove_tree(path)
        layers.collect(self.root, self.store)

    def _full(self, record: InstanceRecord, target: str, snap: str | None, image: ImageRecord,
              image_dir: Path) -> Copied:  # fmt: skip
        chain, paths = self.chains(record.kind), self.paths(record.name)

        def fill(clone: InstanceRecord, where: InstancePaths) -> str:
            return chain.fill(record, paths, image, image_dir, snap, clone, where)

        clone, notes = self._make_clone(record, target, [], "image", image, image_dir, snap, fill)
        return Copied(clone, "full", (), tuple(notes))

    # --- the new instance -----------------------------------------------------------------------

    def _make_clone(
        self, source: InstanceRecord, name: str, chained: list[str], base: str, image: ImageRecord,
        image_dir: Path, snap: str | None, fill: Callable[[InstanceRecord, InstancePaths], str | None],
    ) -> tuple[InstanceRecord, list[str]]:  # fmt: skip
        """Make instance `name` from `source` on `chained` layers: record (new identity), NICs, files,
        disk or tree (`fill` puts the data in and may say its new base), runtime."""
        record = InstanceRecord(
            name=name, kind=source.kind, image=source.image, arch=source.arch, cpus=source.cpus,
            memory=source.memory, config=dict(source.config), labels=dict(source.labels),
            layers=list(chained), base=base,
        )  # fmt: skip
        requests = tuple(
            NicRequest(network=nic.network, limit=nic.limit, model=nic.model) for nic in source.nics
        )
        allow = any(nic.allow_host for nic in source.nics)
        driver, paths = self.drivers(record.kind), self.paths(name)
        record = self.lifecycle._store_new(record, Request(image=image.fingerprint, name=name, nics=requests,
                                                           allow_host=allow))  # fmt: skip
        notes = _left_behind(source, snap)
        try:
            paths.dir.mkdir(parents=True, mode=0o750)
            _copy_inputs(self.paths(source.name).dir, paths.dir)
            driver.prepare(record, image, image_dir, paths)
            new_base = fill(record, paths)
            if new_base is not None and new_base != record.base:
                record.base = new_base
            note = self.chains(record.kind).identity(record, paths, image, image_dir)
            notes += [note] if note else []
            self._save_runtime(record, image, image_dir)
            record = self.store.put(record)
        except BaseException:
            self._quietly(lambda: self.lifecycle._remove(record, paths))
            raise
        return record, notes

    def _save_runtime(self, record: InstanceRecord, image: ImageRecord, image_dir: Path) -> None:
        paths = self.paths(record.name)
        runtime = self.drivers(record.kind).generate(record, image, image_dir, paths)
        atomic_write(paths.runtime, json.dumps(runtime.to_dict(), indent=2))

    # --- flatten --------------------------------------------------------------------------------

    def flatten(self, name: str) -> InstanceRecord:
        """Rewrite the stopped instance's chain into a disk or tree of its own: it then rests on no
        layer. Layers no instance uses any more are removed."""
        wanted = validate_name(name)
        self.store.get(InstanceRecord, wanted)
        with self._locked(wanted), host_errors(f"flattening {wanted}"):
            record = self.store.get(InstanceRecord, wanted)
            if not record.layers:
                raise StateError(f"instance {wanted!r} rests on no layer: there is nothing to flatten")
            self._require_stopped(record, "flattened")
            if record.kind is InstanceKind.VM:
                self._refuse_snapshots(record)
            image = self.images().store.get(ImageRecord, record.image or "")
            image_dir = self.images().path(image)
            before = record.model_copy(deep=True)
            record.base = self.chains(record.kind).flatten(record, self.paths(wanted), image, image_dir)
            record.layers = []
            try:
                self._save_runtime(record, image, image_dir)
                record = self.store.put(record)
            except BaseException:
                self._quietly(lambda: self._save_runtime(before, image, image_dir))
                raise
            layers.collect(self.root, self.store)
            return record

    # --- checks and locks -----------------------------------------------------------------------

    def check(self, source: str, target: str, *, snapshot: str | None = None) -> InstanceRecord:
        """What `copy` would refuse before it changes anything, raised now, without a lock (for
        callers that answer before the work runs, as the API does; `copy` checks again): bad or
        equal names, an unknown source or snapshot, a taken target, a source not stopped."""
        src_name = validate_name(source)
        dst_name = validate_name(target, what="new instance name")
        snap = validate_name(snapshot, what="snapshot name") if snapshot is not None else None
        if src_name == dst_name:
            raise ConflictError(f"cannot copy {src_name} onto itself", hint="give the copy another name")
        record = self.store.get(InstanceRecord, src_name)
        if self.store.find(InstanceRecord, dst_name) is not None:
            raise ConflictError(f"instance {dst_name!r} already exists",
                                hint="pick another name, or delete it first")  # fmt: skip
        self._refuse_leftover(dst_name)
        if snap is not None:
            self.store.get(SnapshotRecord, src_name, snap)
        else:
            self._require_stopped(record, "copied")
        return record

    def check_flatten(self, name: str) -> InstanceRecord:
        """What `flatten` would refuse before it changes anything, raised now, without a lock (as
        `check` for `copy`): an unknown instance, one on no layer, one not stopped."""
        record = self.store.get(InstanceRecord, validate_name(name))
        if not record.layers:
            raise StateError(f"instance {record.name!r} rests on no layer: there is nothing to flatten")
        self._require_stopped(record, "flattened")
        return record

    @contextlib.contextmanager
    def _locked(self, *names: str) -> Iterator[None]:
        """The instances' locks in name order (two copies never wait on each other), then the
        layers lock."""
        with ExitStack() as stack:
            for name in sorted(set(names)):
                stack.enter_context(self.store.lock("instance", name))
            stack.enter_context(layers.lock(self.store))
            yield

    def _require_stopped(self, record: InstanceRecord, doing: str) -> None:
        state = self.drivers(record.kind).status(record, self.paths(record.name)).state
        if state is not InstanceState.STOPPED and state is not InstanceState.ERROR:
            hint = f"stop it first: virtkit stop {record.name}"
            if doing == "copied":
                hint += ", or copy one of its snapshots: --snapshot SNAP"
            raise StateError(
                f"instance {record.name!r} is {state.value}: it can be {doing} only stopped", hint=hint
            )

    def _refuse_snapshots(self, record: InstanceRecord) -> None:
        """A VM's snapshots are inside the disk that flatten rewrites."""
        taken = sorted(s.name for s in self.store.list(SnapshotRecord, instance=record.name))
        if taken:
            raise StateError(
                f"instance {record.name!r} has snapshots ({', '.join(taken)}): it cannot be flattened: "
                "its snapshots belong to the disk that would be rewritten",
                hint="delete them first (virtkit snapshot delete)",
            )

    def _refuse_leftover(self, name: str) -> None:
        """A directory of that name that no record owns is in the way: said, not overwritten."""
        paths = self.paths(name)
        if paths.dir.exists():
            raise ConflictError(f"{paths.dir} exists but no instance {name!r} does",
                                hint=f"move it away first: mv {paths.dir} {paths.dir}.old")  # fmt: skip

    @staticmethod
    def _quietly(step: Callable[[], object]) -> None:
        """An undo step: logged when it fails, so that the first error is the one reported."""
        try:
            step()
        except Exception as exc:
            log.error("undoing a copy step failed: %s", exc)


def _left_behind(source: InstanceRecord, snap: str | None) -> list[str]:
    """What a clone does not take from its source, said to the user."""
    notes = []
    if source.volumes:
        names = ", ".join(f"{vol.pool}/{vol.name}" for vol in source.volumes)
        notes.append(f"volumes stay attached to {source.name} alone: {names}")
    if snap is not None:
        notes.append(f"copied from snapshot {snap} (its disks; no memory state)")
    return notes


def _copy_inputs(source_dir: Path, target_dir: Path) -> None:
    """What the user gave cloud-init for the source (user-data, SSH keys), for the clone's seed."""
    given = source_dir / cloudinit.INPUT_DIR
    if given.is_dir() and not given.is_symlink():
        shutil.copytree(given, target_dir / cloudinit.INPUT_DIR, symlinks=True)

