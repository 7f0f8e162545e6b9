"""Debootstrapped Debian trees kept in the cache, so that only the first build waits for debootstrap.

Layout under the cache directory::

    debian/debs/<debian-arch>/                   .debs (debootstrap --cache-dir), shared by all builds
    debian/trees/<release>-<arch>-<key>/tree/    a debootstrapped, updated tree; complete or absent
    debian/trees/<release>-<arch>-<key>/info.json  when and from what it was made
    debian/trees/.<name>.lock                    held while an entry is made or read
    debian/trees/.tmp-<name>-*                   work in progress, removed by the next build of <name>

The key is a hash of the recipe version, release, architecture and sorted package list. An entry
is built in a temporary directory and renamed into place only when complete. Entries older than
`MAX_AGE` are rebuilt, so images pick up Debian's security updates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from virtkit.errors import BusyError
from virtkit.images.debootstrap import remove_tree
from virtkit.images.tools import cache_lock

log = logging.getLogger(__name__)

MAX_AGE = 7 * 24 * 3600
TREE = "tree"
INFO = "info.json"

# Fills a fresh directory with a tree (debootstrap, updates); raises on failure.
TreeMaker = Callable[[Path], None]


def tree_key(*, recipe: int, release: str, debarch: str, packages: Sequence[str]) -> str:
    """The cache entry name for one recipe (pure): readable prefix, then a hash of everything."""
    spec = json.dumps(
        {"recipe": recipe, "release": release, "arch": debarch, "packages": sorted(set(packages))}
    )
    digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
    return f"{release}-{debarch}-{digest}"


def debs_dir(cache: Path, debarch: str) -> Path:
    path = cache / "debian" / "debs" / debarch
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fresh(entry: Path, now: float) -> bool:
    try:
        info = json.loads((entry / INFO).read_text())
    except (OSError, ValueError):
        return False
    return (entry / TREE).is_dir() and now - float(info.get("created", 0)) < MAX_AGE


@contextmanager
def cached_tree(
    cache: Path, name: str, make: TreeMaker, *, refresh: bool = False, info: dict[str, object] | None = None
) -> Iterator[tuple[Path, bool]]:
    """The cached tree `name`, made by `make` when absent, stale or `refresh`ed: (tree, was_cached).

    The entry stays locked while the caller uses it (copies it), so a concurrent rebuild cannot
    swap it underneath; builds of other entries go on in parallel.
    """
    trees = cache / "debian" / "trees"
    entry = trees / name
    with cache_lock(cache, f"debian-tree-{name}"):
        for stale in trees.glob(f".tmp-{name}-*"):  # left by a killed build: we hold the lock
            log.info("removing the unfinished cache entry %s", stale)
            remove_tree(stale)
        hit = not refresh and _fresh(entry, time.time())
        if not hit:
            _make_entry(trees, name, make, info or {})
            _prune(cache, trees, keep=name)
        yield entry / TREE, hit


def _prune(cache: Path, trees: Path, *, keep: str) -> None:
    """Delete other entries past MAX_AGE (an older recipe's, a package set not built lately),
    skipping any that another build holds."""
    now = time.time()
    for entry in trees.iterdir():
        if entry.name.startswith(".") or entry.name == keep or _fresh(entry, now):
            continue
        try:
            with cache_lock(cache, f"debian-tree-{entry.name}", timeout=0):
                log.info("removing the stale cached tree %s", entry.name)
                remove_tree(entry)
        except BusyError:
            continue


def _make_entry(trees: Path, name: str, make: TreeMaker, info: dict[str, object]) -> None:
    work = trees / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    (work / TREE).mkdir(parents=True)
    try:
        started = time.monotonic()
        make(work / TREE)
        record = {**info, "created": time.time(), "seconds": round(time.monotonic() - started, 1)}
        (work / INFO).write_text(json.dumps(record, indent=2) + "\n")
        entry = trees / name
        old = trees / f".tmp-{name}-old-{uuid.uuid4().hex[:8]}"
        if entry.exists():
            entry.rename(old)
        work.rename(entry)
        remove_tree(old)
    finally:
        remove_tree(work)
