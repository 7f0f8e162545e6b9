"""A running VM's memory and device state in its snapshots (`snapshot create --stateful`).

QEMU saves it with its job-based `snapshot-save` (and puts it back with `snapshot-load`): the
vCPUs stop, the RAM and every device's state are written into the internal snapshot of one qcow2
disk (the `vmstate` node: the VM's first disk of its own, its root disk), each disk named in
`devices` gets an internal snapshot of the same tag at the same instant, and the vCPUs run on if
they ran. Loading goes the other way: every disk goes back to the tag, then the state is read
and the guest runs on from the instruction it was at, its page cache and processes as they were.

`devices` names each disk's root node (the throttle filter over its qcow2 node, the node its
device uses; QEMU passes the snapshot and the state down to the qcow2 node), as the disk-only
snapshots of vmsnap.py do. QEMU then checks and snapshots exactly these disks: the read-only
ones (the image's disk under the overlay, a cloud-init seed, an ISO) are not its concern.

What QEMU cannot save, or what would make a restored guest wrong, is said before anything is
made (`preflight`): a device that blocks migration (QEMU saves state with the migration code;
query-migrate lists the `blocked-reasons`), no qcow2 disk of the VM's own to hold the state, and
writable disks the snapshot would not hold (a pool volume; a disk outside the VM's directory):
putting the memory back over a disk that did not go back with it corrupts the guest's
filesystems, whose cached blocks no longer match the disk.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Protocol

from virtkit.errors import StateError

log = logging.getLogger(__name__)

STATE_TIMEOUT = 600.0  # writing (reading) many GiB of RAM to (from) a slow disk


class Qmp(Protocol):
    """The QMP monitor of the running QEMU (drivers/qemu/monitor.Monitor)."""

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object: ...

    def run_job(self, command: str, arguments: Mapping[str, object], timeout: float) -> None: ...


def preflight(monitor: Qmp, disks: Sequence[str], others: Sequence[str]) -> None:
    """StateError saying why this VM's state cannot be saved, if it cannot: `disks` are its own
    qcow2 disks (the snapshot's), `others` the writable disks the snapshot would not hold."""
    if not disks:
        raise StateError(
            "a stateful snapshot keeps the VM's memory in one of its own qcow2 disks, and this VM has none "
            "(it runs from its image's kernel and initramfs)",
            hint="nothing of it survives a restart anyway: there is nothing to snapshot",
        )
    if others:
        raise StateError(
            f"a stateful snapshot holds the VM's own disks only, and {', '.join(others)} would not go back "
            "with its memory: the guest's view of it would no longer match what it holds",
            hint="detach it first (virtkit volume detach), or take a disk-only snapshot: drop --stateful",
        )
    status = monitor.execute("query-migrate")
    reasons = status.get("blocked-reasons") if isinstance(status, dict) else None
    if isinstance(reasons, list) and reasons:
        raise StateError(
            f"QEMU cannot save this VM's state: {'; '.join(str(reason) for reason in reasons)}",
            hint="take a disk-only snapshot instead: drop --stateful",
        )


def _job(what: str) -> str:
    return f"virtkit-{what}-{secrets.token_hex(4)}"


def save(monitor: Qmp, name: str, nodes: Sequence[str]) -> None:
    """Snapshot `name` of the disks whose root nodes are `nodes`, the state in the first."""
    arguments = {"job-id": _job("save"), "tag": name, "vmstate": nodes[0], "devices": list(nodes)}
    log.info("saving the VM's state as snapshot %s in %s (disks %s)", name, nodes[0], ", ".join(nodes))
    monitor.run_job("snapshot-save", arguments, STATE_TIMEOUT)


def load(monitor: Qmp, name: str, nodes: Sequence[str]) -> None:
    """Put the disks whose root nodes are `nodes` back to snapshot `name` and load the state kept in
    the first; then let the vCPUs run (QEMU resumes them only when they ran before the load)."""
    arguments = {"job-id": _job("load"), "tag": name, "vmstate": nodes[0], "devices": list(nodes)}
    log.info("loading the VM's state from snapshot %s in %s", name, nodes[0])
    monitor.run_job("snapshot-load", arguments, STATE_TIMEOUT)
    status = monitor.execute("query-status")
    if not (isinstance(status, dict) and status.get("running")):
        monitor.execute("cont")
