"""`virtkit export` and `virtkit import`: an instance to a portable archive and back (docs/backups.md)."""

from __future__ import annotations

from pathlib import Path

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_json
from virtkit.cli.params import INSTANCE_NAME, NameType
from virtkit.units import format_size


@click.command("export")
@click.argument("name", type=INSTANCE_NAME)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--compress", "compression", type=click.Choice(["zstd", "gzip", "none"]), default="zstd",
              show_default=True, help="How the archive is compressed.")  # fmt: skip
@click.option("--instance-only", is_flag=True, help="Leave the instance's snapshots out.")
@click.option("--since", metavar="SNAP", type=NameType("snapshot name"),
              help="Only what changed since snapshot SNAP (VMs): import it onto an instance imported "
                   "from a backup holding SNAP.")  # fmt: skip
@json_option
def export_command(name: str, file: Path, compression: str, instance_only: bool, since: str | None) -> None:
    """Write instance NAME (stopped or running), its snapshots and its image to the archive FILE."""
    from virtkit.ops.backup import Backups

    ctx = get_context()
    done = Backups(ctx.root, ctx.store()).export(name, file, compression=compression,
                                                 instance_only=instance_only, since=since)  # fmt: skip
    if ctx.json:
        document = done.manifest.model_dump(mode="json")
        print_json({"path": str(done.path), "size": done.size, "manifest": document})
        return
    manifest = done.manifest
    held = f"{len(manifest.snapshots)} snapshot{'s' if len(manifest.snapshots) != 1 else ''}"
    what = f"the changes since {since}" if since else held
    click.echo(f"Exported {name} to {done.path} ({format_size(done.size)}, {compression}, {what}).")
    for note in manifest.notes:
        click.echo(f"Note: {note}.")


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("name", type=INSTANCE_NAME, required=False)
@json_option
def import_command(file: Path, name: str | None) -> None:
    """Restore the instance in archive FILE (made by `virtkit export`) here, as NAME if given. Every
    checksum is verified before anything is registered; it gets a new UUID and new MACs."""
    from virtkit.ops.backup import Backups

    ctx = get_context()
    done = Backups(ctx.root, ctx.store()).import_archive(file, name)
    if ctx.json:
        document = done.record.model_dump(mode="json")
        print_json({**document, "notes": done.notes, "image_added": done.image_added})
        return
    record = done.record
    click.echo(f"Imported {record.kind.value} {record.name} from {file.name}"
               + (f" (image {done.image[:12]} added)" if done.image_added else "") + ".")  # fmt: skip
    for note in done.notes:
        click.echo(f"Note: {note}.")
    click.echo(f"Start it: virtkit start {record.name}")
