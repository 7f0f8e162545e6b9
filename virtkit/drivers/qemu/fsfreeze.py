"""A running guest's filesystems frozen by qemu-guest-agent while its disks are captured, so an
export of a running VM holds filesystems as cleanly unmounted ones are, not as after a power cut.

`frozen(socket)` freezes (guest-fsfreeze-freeze: the guest flushes and blocks writes), yields
a note saying what was done, and thaws on the same connection, retried once on a new one: a
guest left frozen would hang its writers. A guest without qemu-guest-agent, or one whose agent
cannot freeze (no fsfreeze support, no answer in time), is captured unfrozen and the note says
why: freezing is best effort and never fails the export.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from virtkit.drivers.qemu.channel import SYNC_TIMEOUT, AgentClosed, AgentTimeout, Link, agent_errors, connect
from virtkit.drivers.qemu.guestagent import HINT, Qga, QgaError
from virtkit.errors import VirtkitError

log = logging.getLogger(__name__)

FREEZE_TIMEOUT = 30.0  # the guest flushes its dirty pages first
THAW_TIMEOUT = 10.0
UNFROZEN = "the disks were captured unfrozen (as after a power cut)"


@contextlib.contextmanager
def frozen(socket_path: Path) -> Iterator[str]:
    """The guest's filesystems frozen for the block, where its agent can; a note on what was done."""
    with contextlib.ExitStack() as stack:
        try:
            qga = stack.enter_context(_session(socket_path))
            count = qga.call("guest-fsfreeze-freeze", {}, time.monotonic() + FREEZE_TIMEOUT)
        except (VirtkitError, QgaError, OSError) as exc:
            yield f"{UNFROZEN}: qemu-guest-agent could not freeze them ({_why(exc)})"
            return
        try:
            yield f"{count if isinstance(count, int) else 'the'} guest filesystem(s) frozen while captured"
        finally:
            _thaw(qga, socket_path)


@contextlib.contextmanager
def _session(socket_path: Path) -> Iterator[Qga]:
    began = time.monotonic()
    with connect(socket_path, "guest agent") as sock, agent_errors(["guest-fsfreeze"], began, HINT):
        qga = Qga(Link(sock))
        qga.sync(SYNC_TIMEOUT)
        yield qga


def _thaw(qga: Qga, socket_path: Path) -> None:
    try:
        qga.call("guest-fsfreeze-thaw", {}, time.monotonic() + THAW_TIMEOUT)
        return
    except (QgaError, AgentTimeout, AgentClosed, VirtkitError, OSError) as exc:
        log.warning("thawing the guest's filesystems failed (%s): trying again", _why(exc))
    try:
        with _session(socket_path) as again:
            again.call("guest-fsfreeze-thaw", {}, time.monotonic() + THAW_TIMEOUT)
    except (QgaError, VirtkitError, OSError) as exc:
        log.error("the guest's filesystems may still be frozen (%s): thaw them in it (fsfreeze -u)",
                  _why(exc))


def _why(exc: BaseException) -> str:
    return getattr(exc, "desc", None) or str(exc) or type(exc).__name__
