"""The server's snapshot timer: `virtkit serve` runs `virtkit snapshot prune --all` (ops/prune.py)
every `interval` seconds in a thread of its own, so schedules and expiry apply without cron.

Each round takes the due scheduled snapshots and deletes the expired ones, instance by instance
under each instance's lock (an API operation on the same instance waits, or is waited for). An
instance whose prune fails is logged and retried the next round; the others are still done.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from virtkit.errors import VirtkitError
from virtkit.store import Store

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60.0


class PruneTimer:
    """A daemon thread pruning the snapshots of `root` every `interval` seconds, first at once."""

    def __init__(self, root: Path, store: Store, interval: float = DEFAULT_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError("the prune interval is positive")
        self.root, self.store, self.interval = root, store, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vk-prune", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the round in progress (waited for at most `timeout` seconds)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.round()
            self._stop.wait(self.interval)

    def round(self) -> None:
        """One prune of every instance; what it did logged."""
        from virtkit.ops.prune import Pruner

        try:
            results = Pruner(self.root, self.store).prune()
        except (VirtkitError, OSError) as exc:  # the store itself failed: try again next round
            log.error("snapshot timer: %s", exc)
            return
        for done in results:
            for snapshot in done.created:
                log.info("snapshot timer: %s: took snapshot %s", done.instance, snapshot.name)
            for snapshot in done.deleted:
                log.info("snapshot timer: %s: deleted snapshot %s (expired)", done.instance, snapshot.name)
