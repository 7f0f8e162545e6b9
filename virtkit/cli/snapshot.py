"""`virtkit snapshot create|list|show|restore|delete|prune`: snapshots of instances (docs/snapshots.md)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_fields, print_json, print_table
from virtkit.cli.params import INSTANCE_NAME, NameType
from virtkit.units import format_size

if TYPE_CHECKING:
    from virtkit.api.remote_snapshots import RemoteSnapshots
    from virtkit.model import SnapshotRecord
    from virtkit.ops.prune import Pruned
    from virtkit.ops.snapshots import Snapshots

SNAPSHOT_NAME = NameType("snapshot name")


class DurationType(click.ParamType[int, Any]):
    """A duration such as 30m, 12h, 7d, 2w, converted to seconds (SpecError when it is not one)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from virtkit.ops.schedule import parse_duration

        return value if isinstance(value, int) else parse_duration(str(value), what="expiry")


def snapshots() -> Snapshots | RemoteSnapshots:
    """This host's snapshot verbs, or those of the remote in effect (api/remote_snapshots.py)."""
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_snapshots import RemoteSnapshots

        return RemoteSnapshots(ctx.client())
    from virtkit.ops.snapshots import Snapshots

    return Snapshots(ctx.root, ctx.store())


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _taken(record: SnapshotRecord) -> str:
    return ("running, stateful" if record.stateful else "running") if record.live else "stopped"


def _expires(record: SnapshotRecord) -> str:
    return _when(record.expires_at) if record.expires_at is not None else "never"


def _consistency(record: SnapshotRecord) -> str:
    if record.stateful:
        return "exact: memory and device state too (restore resumes the guest where it was)"
    return "as after a power cut (no memory state)" if record.live else "clean (it was stopped)"


@click.group("snapshot")
def snapshot_group() -> None:
    """Snapshots of an instance: a VM's disks (qcow2 internal snapshots) and, with --stateful, its
    memory; a container's writable layer. Restoring a running instance stops it, restores it and
    starts it again; a stateful snapshot resumes it where it was."""


@snapshot_group.command("create")
@click.argument("name", type=INSTANCE_NAME)
@click.argument("snapshot", type=SNAPSHOT_NAME, required=False)
@click.option("--stateful", is_flag=True,
              help="A running VM's memory and device state too: restore resumes the guest where it was.")
@click.option("--expiry", type=DurationType(), metavar="DURATION",
              help="Delete it at the first `snapshot prune` after this long: 30m, 12h, 7d, 2w.")
@json_option
def create_command(name: str, snapshot: str | None, stateful: bool, expiry: int | None) -> None:
    """Snapshot instance NAME as SNAPSHOT (default: snap0, snap1, ...), stopped or running."""
    record, notes = snapshots().create(name, snapshot, stateful=stateful, expiry=expiry)
    if get_context().json:
        print_json(record.model_dump(mode="json"))
        return
    extra = ", with its memory state" if record.stateful else ""
    extra += f", expires {_expires(record)}" if record.expires_at is not None else ""
    click.echo(f"Snapshot {record.name} of {name} created ({format_size(record.size)}{extra}).")
    for note in notes:
        click.echo(f"Note: {note}.")


@snapshot_group.command("list")
@click.argument("name", type=INSTANCE_NAME)
@json_option
def list_command(name: str) -> None:
    """List the snapshots of instance NAME, oldest first."""
    records = snapshots().list(name)
    if get_context().json:
        print_json([record.model_dump(mode="json") for record in records])
        return
    rows = [(r.name, _when(r.created_at), format_size(r.size), _taken(r), _expires(r)) for r in records]
    empty = f"No snapshots of {name}. Take one: virtkit snapshot create {name}"
    print_table(["NAME", "TAKEN AT", "SIZE", "TAKEN WHILE", "EXPIRES"], rows, empty=empty)


@snapshot_group.command("show")
@click.argument("name", type=INSTANCE_NAME)
@click.argument("snapshot", type=SNAPSHOT_NAME)
@json_option
def show_command(name: str, snapshot: str) -> None:
    """Show one snapshot: when it was taken, its size, what it holds and where."""
    view = snapshots().view(name, snapshot)
    if get_context().json:
        print_json(view.to_dict())
        return
    r = view.record
    fields = [
        ("Instance", r.instance), ("Name", r.name), ("Taken at", _when(r.created_at)),
        ("Taken while", _taken(r)), ("Consistency", _consistency(r)), ("Size", format_size(r.size)),
        ("Expires", _expires(r)),
        ("Made by", "the schedule (snapshots.schedule)" if r.scheduled else "snapshot create"),
    ]  # fmt: skip
    for index, disk in enumerate(r.disks):
        state = " with the memory state" if r.stateful and index == 0 else ""
        fields.append((f"Disk {disk}", f"qcow2 internal snapshot {r.name}{state}"))
    for file in r.files:
        fields.append((f"Copy of {file}", str(view.path / file)))
    print_fields(fields)


@snapshot_group.command("restore")
@click.argument("name", type=INSTANCE_NAME)
@click.argument("snapshot", type=SNAPSHOT_NAME)
@click.option("--wait", is_flag=True, help="If it is restarted, return once the guest says it is ready.")
@json_option
def restore_command(name: str, snapshot: str, wait: bool) -> None:
    """Put instance NAME back to SNAPSHOT. What it holds now is lost. A running (or paused) instance
    is stopped at once, restored and started again. A stateful snapshot resumes the VM, running or
    stopped before, at the moment it was taken."""
    done = snapshots().restore(name, snapshot, wait=wait)
    if get_context().json:
        document = done.snapshot.model_dump(mode="json")
        print_json({**document, "was": done.was.value, "restarted": done.restarted, "resumed": done.resumed})
        return
    if done.resumed:
        click.echo(f"Instance {name} (was {done.was.value}) resumed at snapshot {snapshot}: it runs on from "
                   "where it was when the snapshot was taken.")  # fmt: skip
    elif done.restarted:
        click.echo(f"Instance {name} was {done.was.value}: stopped, restored to snapshot {snapshot}, "
                   "and started again.")  # fmt: skip
    else:
        click.echo(f"Instance {name} restored to snapshot {snapshot}.")


@snapshot_group.command("delete")
@click.argument("name", type=INSTANCE_NAME)
@click.argument("snapshot", type=SNAPSHOT_NAME)
def delete_command(name: str, snapshot: str) -> None:
    """Delete SNAPSHOT of instance NAME (the instance itself is not changed)."""
    snapshots().delete(name, snapshot)
    click.echo(f"Snapshot {snapshot} of {name} deleted.")


@snapshot_group.command("prune")
@click.argument("name", type=INSTANCE_NAME, required=False)
@click.option("--all", "every", is_flag=True, help="Every instance.")
@json_option
def prune_command(name: str | None, every: bool) -> None:
    """Take the snapshots NAME's snapshots.schedule says are due and delete its expired ones (or
    every instance's, with --all). Run it from cron or a systemd timer, e.g. every few minutes."""
    from virtkit.errors import SpecError, VirtkitError
    from virtkit.ops.prune import Pruner

    if (name is None) == (not every):
        said = "give an instance NAME or --all, not both" if every else "give an instance NAME or --all"
        raise SpecError(said, hint="e.g. virtkit snapshot prune --all")
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_common import refuse

        refuse("snapshot prune", "the API has no prune route; run it from cron on the server's host")
    results = Pruner(ctx.root, ctx.store()).prune(name)
    if ctx.json:
        print_json([result.to_dict() for result in results])
    else:
        for result in results:
            _say_pruned(result)
    failed = [result for result in results if result.error is not None]
    if failed:
        raise VirtkitError(f"pruning failed for {', '.join(result.instance for result in failed)}")


def _say_pruned(result: Pruned) -> None:
    name = result.instance
    for record in result.created:
        click.echo(f"Snapshot {record.name} of {name} taken (scheduled), expires {_expires(record)}.")
    for record in result.deleted:
        click.echo(f"Snapshot {record.name} of {name} deleted (expired {_expires(record)}).")
    if result.skipped:
        click.echo(f"{name}: a scheduled snapshot is due but not taken: {result.skipped}.")
    if result.error is not None:
        click.echo(f"{name}: {result.error}", err=True)
    elif result.next_at is not None:
        click.echo(f"{name}: next scheduled snapshot at {_when(result.next_at)}.")
    elif not (result.created or result.deleted):
        click.echo(f"{name}: no snapshots.schedule, and no snapshot has expired.")
