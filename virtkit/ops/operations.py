"""Long-running operations: run in a thread, recorded with their progress, waited for, cancelled.

Each emits `operation` events: created, running (its turn has come: operations on one target run
one at a time), progress, and how it ended (success, failure, cancelled).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtkit.errors import SpecError, StateError, VirtkitError
from virtkit.model import OperationRecord, OperationStatus
from virtkit.ops import events
from virtkit.store import Store

log = logging.getLogger(__name__)

WAIT_POLL = 0.05


def list_operations(store: Store, status: OperationStatus | None = None) -> list[OperationRecord]:
    """Operations, oldest first, optionally only those in one status."""
    records = store.list(OperationRecord)
    if status is not None:
        records = [record for record in records if record.status == status]
    return sorted(records, key=lambda record: record.created_at)


def get_operation(store: Store, operation_id: str) -> OperationRecord:
    """One operation by its UUID."""
    try:
        canonical = str(uuid.UUID(operation_id))
    except ValueError:
        shown = operation_id[:80]
        raise SpecError(
            f"invalid operation id {shown!r}: expected a UUID",
            hint="`virtkit operation list` shows the ids",
        ) from None
    return store.get(OperationRecord, canonical)


# --- running them -------------------------------------------------------------------------------

INTERRUPTED = "interrupted: the server stopped while it ran; check the target's state and try again"


class Cancelled(VirtkitError):
    """Raised inside a cancellable operation's work when a cancel was asked for."""


@dataclass
class Context:
    """What an operation's work gets: a way to report progress and to hear a cancel."""

    runner: Operations
    id: str
    cancel: threading.Event = field(default_factory=threading.Event)

    def progress(self, percent: float, message: str = "") -> None:
        self.runner.update(self.id, progress=max(0.0, min(100.0, percent)), message=message)

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("cancelled on request")


Work = Callable[[Context], dict[str, Any] | None]


class Operations:
    """Long actions run in threads of this process, each recorded as an OperationRecord.

    Records outlive the process: `recover()` (called when the server starts) turns any operation
    still pending or running from a previous process into a failure, so none stays "running".
    """

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store
        self._running: dict[str, Context] = {}
        self._cancellable: set[str] = set()
        self._guard = threading.Lock()
        self._serial: dict[str, threading.Lock] = {}  # per target: its operations run one at a time

    def recover(self) -> list[OperationRecord]:
        stale = []
        for record in self.store.list(OperationRecord):
            if record.status in (OperationStatus.PENDING, OperationStatus.RUNNING):
                stale.append(self._finish(record.id, OperationStatus.FAILURE, error=INTERRUPTED))
        return stale

    def submit(self, action: str, target: str, work: Work, *, cancellable: bool = False) -> OperationRecord:
        record = self.store.create(OperationRecord(action=action, target=target))
        context = Context(self, record.id)
        with self._guard:
            self._running[record.id] = context
            if cancellable:
                self._cancellable.add(record.id)
        events.emit(self.root, "operation", "created", target, id=record.id, operation=action)
        with self._guard:
            serial = self._serial.setdefault(target, threading.Lock()) if target else threading.Lock()
        thread = threading.Thread(target=self._run, args=(context, work, serial), name=f"op-{action}",
                                  daemon=True)  # fmt: skip
        thread.start()
        return record

    def update(self, operation_id: str, **changes: Any) -> OperationRecord:
        with self.store.transaction():
            record = self.store.get(OperationRecord, operation_id)
            updated = self.store.put(record.model_copy(update=changes))
        if "progress" in changes:
            events.emit(
                self.root, "operation", "progress", record.target,
                id=operation_id, progress=updated.progress, message=updated.message,
            )
        return updated

    def cancel(self, operation_id: str) -> OperationRecord:
        record = get_operation(self.store, operation_id)
        with self._guard:
            context = self._running.get(record.id)
            safe = record.id in self._cancellable
        if context is None or record.status not in (OperationStatus.PENDING, OperationStatus.RUNNING):
            raise StateError(f"operation {record.id} is {record.status.value}: there is nothing to cancel")
        if not safe:
            raise StateError(
                f"operation {record.id} ({record.action}) cannot be cancelled safely once started",
                hint="wait for it: `virtkit operation wait ID`",
            )
        context.cancel.set()
        return record

    def wait(self, operation_id: str, timeout: float) -> OperationRecord:
        """The operation once it ended, or as it is when `timeout` seconds have passed."""
        deadline = time.monotonic() + timeout
        record = get_operation(self.store, operation_id)
        while record.status in (OperationStatus.PENDING, OperationStatus.RUNNING):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(WAIT_POLL, left))
            record = self.store.get(OperationRecord, record.id)
        return record

    def _run(self, context: Context, work: Work, serial: threading.Lock) -> None:
        with serial:  # one operation at a time per target (in no promised order)
            self._run_now(context, work)

    def _run_now(self, context: Context, work: Work) -> None:
        try:
            record = self.update(context.id, status=OperationStatus.RUNNING)
            events.emit(self.root, "operation", "running", record.target, id=record.id,
                        operation=record.action)  # fmt: skip
            context.check_cancelled()
            result = work(context) or {}
        except Cancelled:
            self._finish(context.id, OperationStatus.CANCELLED, error="cancelled on request")
        except VirtkitError as exc:
            self._finish(context.id, OperationStatus.FAILURE, error=str(exc), result={"error": exc.to_dict()})
        except Exception as exc:  # a bug: recorded, never left "running"
            log.exception("operation %s failed", context.id)
            self._finish(context.id, OperationStatus.FAILURE, error=f"internal error: {exc}")
        else:
            self._finish(context.id, OperationStatus.SUCCESS, result=result, progress=100.0)
        finally:
            with self._guard:
                self._running.pop(context.id, None)
                self._cancellable.discard(context.id)

    def _finish(self, operation_id: str, status: OperationStatus, **changes: Any) -> OperationRecord:
        record = self.update(operation_id, status=status, **changes)
        events.emit(
            self.root, "operation", status.value, record.target,
            id=operation_id, operation=record.action, error=record.error,
        )
        return record
