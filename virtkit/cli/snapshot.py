"""`virtkit snapshot create|list|show|restore|delete`: snapshots of instances (docs/snapshots.md)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_fields, print_json, print_table
from virtkit.cli.params import INSTANCE_NAME, NameType
from virtkit.units import format_size

if TYPE_CHECKING:
    from virtkit.model import SnapshotRecord
    from virtkit.ops.snapshots import Snapshots

SNAPSHOT_NAME = NameType("snapshot name")


def snapshots() -> Snapshots:
    from virtkit.ops.snapshots import Snapshots

    ctx = get_context()
    return Snapshots(ctx.root, ctx.store())


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _taken(record: SnapshotRecord) -> str:
    return "running" if record.live else "stopped"


@click.group("snapshot")
def snapshot_group() -> None:
    """Snapshots of an instance: a VM's disks (qcow2 internal snapshots), a container's writable
    layer. Restoring a running instance stops it, restores it and starts it again."""


@snapshot_group.command("create")
@click.argument("name", type=INSTANCE_NAME)
@click.argument("snapshot", type=SNAPSHOT_NAME, required=False)
@json_option
def create_command(name: str, snapshot: str | None) -> None:
    """Snapshot instance NAME as SNAPSHOT (default: snap0, snap1, ...), stopped or running."""
    record, notes = snapshots().create(name, snapshot)
    if get_context().json:
        print_json(record.model_dump(mode="json"))
        return
    click.echo(f"Snapshot {record.name} of {name} created ({format_size(record.size)}).")
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
    rows = [(r.name, _when(r.created_at), format_size(r.size), _taken(r)) for r in records]
    empty = f"No snapshots of {name}. Take one: virtkit snapshot create {name}"
    print_table(["NAME", "TAKEN AT", "SIZE", "TAKEN WHILE"], rows, empty=empty)


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
        ("Taken while", _taken(r)),
        ("Consistency", "as after a power cut (no memory state)" if r.live else "clean (it was stopped)"),
        ("Size", format_size(r.size)),
    ]  # fmt: skip
    for disk in r.disks:
        fields.append((f"Disk {disk}", f"qcow2 internal snapshot {r.name}"))
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
    is stopped at once, restored and started again."""
    done = snapshots().restore(name, snapshot, wait=wait)
    if get_context().json:
        document = done.snapshot.model_dump(mode="json")
        print_json({**document, "was": done.was.value, "restarted": done.restarted})
        return
    if done.restarted:
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
