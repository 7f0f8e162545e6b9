"""Shared read-only layers: what linked clones rest on (design: docs/clones.md).

A linked copy freezes its source's own top (a VM's root.qcow2, a container's upper/) into a layer
and gives the source and the clone each a new empty top on it, so that nothing ever writes a
shared file and the two diverge independently. Layout::

    ROOT/layers/                root's, 0755: QEMU's user and containers' roots read through it
    ROOT/layers/ID.qcow2        a VM layer: a qcow2 whose backing file is the next layer or the
                                image's disk, root's, 0444
    ROOT/layers/ID/tree/        a container layer: an overlayfs layer (whiteouts, opaque
                                directories) whose owners are the container's own ids, 0-based
                                like an image's tree, so any container can show it in its range;
                                ROOT/layers/ID/ is root's, 0700: no host user whose uid its files
                                carry can reach them
    ROOT/layers/ID.json         what it is: kind, the instance it was made from, when

A layer is used by the instances whose record names it (`InstanceRecord.layers`): that is its
reference count, read from the records each time, never kept apart where it could drift.
`collect` removes the layers no record uses. Every change of layers or of which records use them
holds the `host/layers` lock (after the instance's lock, never before).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

from virtkit.errors import StateError
from virtkit.model import InstanceKind, InstanceRecord
from virtkit.storage.archive import remove_tree
from virtkit.store import Store, atomic_write

log = logging.getLogger(__name__)

LAYERS_DIR = "layers"
DIR_MODE = 0o755
HOME_MODE = 0o700  # ROOT/layers/ID/ of a container layer: root's alone
TREE = "tree"  # ROOT/layers/ID/tree: the container layer itself
_ID = re.compile(r"[0-9a-f]{32}")
_ENTRY = re.compile(r"(?P<id>[0-9a-f]{32})(?P<ext>\.qcow2|\.json)?")

__all__ = [
    "LayerMeta",
    "collect",
    "dependents",
    "layer_path",
    "layers_dir",
    "lock",
    "make_home",
    "new_id",
    "read_meta",
    "users",
    "write_meta",
]


@dataclass(frozen=True)
class LayerMeta:
    """What a layer is. `origin` is the UUID of the instance it was frozen from (names are reused,
    UUIDs are not); `standalone`: a container tree that rests on nothing (no image below it)."""

    id: str
    kind: str
    origin: str
    origin_name: str
    created_at: float
    standalone: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def new_id() -> str:
    return uuid.uuid4().hex


def layers_dir(root: Path) -> Path:
    """ROOT/layers, made (root's, 0755) when missing."""
    path = root / LAYERS_DIR
    path.mkdir(mode=DIR_MODE, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise StateError(f"{path} is not a directory", hint=f"move it away: mv {path} {path}.suspect")
    return path


def layer_path(root: Path, layer: str, kind: InstanceKind | str) -> Path:
    """Where layer `layer` of an instance of `kind` lives (not made here)."""
    if not _ID.fullmatch(layer):
        raise StateError(f"{layer!r} is not a layer id")
    if str(kind) == InstanceKind.VM.value:
        return root / LAYERS_DIR / f"{layer}.qcow2"
    return root / LAYERS_DIR / layer / TREE


def make_home(root: Path, layer: str, kind: InstanceKind | str) -> Path:
    """Where new layer `layer` goes, its parent made: a container layer's tree sits in a directory
    of its own that only root may enter (its files are owned by the container's 0-based ids, which
    are host users' ids too: none of them may reach a shared layer)."""
    path = layer_path(root, layer, kind)
    layers_dir(root)
    if path.parent.name == layer:
        path.parent.mkdir(mode=HOME_MODE)
    return path


def root_of(instance_dir: Path) -> Path:
    """The state root of an instance directory (ROOT/instances/NAME)."""
    return instance_dir.parent.parent


def write_meta(root: Path, meta: LayerMeta) -> None:
    atomic_write(
        layers_dir(root) / f"{meta.id}.json", json.dumps(meta.to_dict(), indent=2) + "\n", mode=0o644
    )


def read_meta(root: Path, layer: str) -> LayerMeta | None:
    """The layer's description, None when it has none (or it cannot be read: said in the log)."""
    path = root / LAYERS_DIR / f"{layer}.json"
    try:
        data = json.loads(path.read_text())
        return LayerMeta(**{key: data[key] for key in LayerMeta.__dataclass_fields__ if key in data})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def lock(store: Store) -> AbstractContextManager[None]:
    """The lock every change of layers and of the records using them holds."""
    return store.lock("host", "layers")


def users(store: Store, layer: str) -> list[str]:
    """The instances whose chain holds `layer`, by name."""
    return sorted(record.name for record in store.list(InstanceRecord) if layer in record.layers)


def dependents(store: Store, root: Path, record: InstanceRecord) -> list[str]:
    """The other instances resting on a layer frozen from `record`: what deleting it would orphan."""
    made = {layer for layer in _ids(root) if (meta := read_meta(root, layer)) and meta.origin == record.uuid}
    return sorted(other.name for other in store.list(InstanceRecord)
                  if other.name != record.name and made.intersection(other.layers))  # fmt: skip


def _ids(root: Path) -> Iterator[str]:
    try:
        names = os.listdir(root / LAYERS_DIR)
    except FileNotFoundError:
        return
    seen = set()
    for name in names:
        match = _ENTRY.fullmatch(name)
        if match and match["id"] not in seen:
            seen.add(match["id"])
            yield match["id"]


def collect(root: Path, store: Store) -> list[str]:
    """Remove every layer no instance uses (under the layers lock); their ids. A layer made a moment
    ago is safe: its maker holds the lock until the records naming it are stored."""
    removed: list[str] = []
    with lock(store):
        used = {layer for record in store.list(InstanceRecord) for layer in record.layers}
        for layer in list(_ids(root)):
            if layer in used:
                continue
            for name in (f"{layer}.qcow2", layer, f"{layer}.json"):
                path = root / LAYERS_DIR / name
                if os.path.lexists(path):
                    remove_tree(path)
            removed.append(layer)
            log.info("removed layer %s: no instance uses it any more", layer)
        directory = root / LAYERS_DIR
        if directory.is_dir() and not os.listdir(directory):
            directory.rmdir()
    return removed


def describe(root: Path, record: InstanceRecord) -> list[dict[str, object]]:
    """The record's layers as `virtkit show` gives them: id, made from, when."""
    shown = []
    for layer in record.layers:
        meta = read_meta(root, layer)
        shown.append({
            "id": layer,
            "from": meta.origin_name if meta else "",
            "created_at": meta.created_at if meta else 0.0,
            "path": str(layer_path(root, layer, record.kind)),
        })  # fmt: skip
    return shown


def stamp(record: InstanceRecord, layer: str, *, standalone: bool = False) -> LayerMeta:
    """The description of a layer frozen now from `record`."""
    return LayerMeta(layer, record.kind.value, record.uuid, record.name, time.time(), standalone)
