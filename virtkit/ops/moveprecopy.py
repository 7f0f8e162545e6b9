"""The pre-copy of a running container's cold move (ops/movecold.py): what CRIU would make a live
move is done as a cold move with a short stop.

While the container runs, a snapshot of it (PRECOPY) is taken, and the whole container, that
snapshot with the others, is sent and imported there (stopped). Then it is stopped here and only
what its writable layer changed since PRECOPY is sent (an incremental export, storage/treediff.py)
and applied there onto PRECOPY; PRECOPY is deleted there, and it starts. The downtime is the stop,
the difference and the start, not the whole layer. Until the difference is applied there, the
container here has everything: a failure (or a rerun after a kill) discards the copy there and
deletes PRECOPY here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from virtkit.errors import ConflictError, VirtkitError
from virtkit.model import SnapshotRecord

if TYPE_CHECKING:
    from virtkit.ops.movecold import ColdMove

log = logging.getLogger(__name__)

PRECOPY = "virtkit-precopy"


def check_free(move: ColdMove, name: str) -> None:
    """Refuse a container that has a snapshot of PRECOPY's name already (not ours to replace)."""
    if move.store.find(SnapshotRecord, name, PRECOPY) is not None:
        raise ConflictError(f"{name!r} has a snapshot named {PRECOPY}, the name a move's pre-copy takes",
                            hint=f"delete or keep it elsewhere: virtkit snapshot delete {name} {PRECOPY}")


def take(move: ColdMove, name: str) -> None:
    """The snapshot the difference will be taken against (the container runs on)."""
    from virtkit.ops.snapshots import Snapshots

    Snapshots(move.root, move.store, move.drivers).create(name, PRECOPY)


def forget_here(move: ColdMove, name: str) -> None:
    """PRECOPY deleted here, if it is there (undoing: a failure is logged, not raised)."""
    from virtkit.ops.snapshots import Snapshots

    if move.store.find(SnapshotRecord, name, PRECOPY) is None:
        return
    try:
        Snapshots(move.root, move.store, move.drivers).delete(name, PRECOPY)
    except VirtkitError as exc:
        log.error("%s: the pre-copy snapshot %s could not be deleted: %s", name, PRECOPY, exc)
