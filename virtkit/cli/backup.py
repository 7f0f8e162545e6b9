"""`virtkit export` and `virtkit import`: an instance to a portable archive and back (docs/backups.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_json
from virtkit.cli.params import INSTANCE_NAME, NameType
from virtkit.units import format_size

if TYPE_CHECKING:
    from virtkit.api.remote_backups import RemoteBackups
    from virtkit.api.streams import Streams
    from virtkit.ops.backup import Backups


def remote_streams() -> Streams:
    """The streaming endpoints (api/streams.py) of the remote in effect, closed with the command."""
    from virtkit.api.streams import Streams

    ctx = get_context()
    remote = ctx.remotes().get(ctx.remote_name())
    streams = Streams.of(ctx.client(), token=remote.token, certificate=remote.certificate,
                         pinned=remote.pinned)  # fmt: skip
    click.get_current_context().call_on_close(streams.close)
    return streams


def backups() -> Backups | RemoteBackups:
    """This host's export and import, or the remote's in effect with the archive on this host
    (api/remote_backups.py)."""
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_backups import RemoteBackups

        return RemoteBackups(remote_streams())
    from virtkit.ops.backup import Backups

    return Backups(ctx.root, ctx.store())


@click.command("export")
@click.argument("name", type=INSTANCE_NAME)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--compress", "compression", type=click.Choice(["zstd", "gzip", "none"]), default="zstd",
              show_default=True, help="How the archive is compressed.")  # fmt: skip
@click.option("--instance-only", is_flag=True, help="Leave the instance's snapshots out.")
@click.option("--since", metavar="SNAP", type=NameType("snapshot name"),
              help="Only what changed since snapshot SNAP: import it onto an instance imported "
                   "from a backup holding SNAP.")  # fmt: skip
@json_option
def export_command(name: str, file: Path, compression: str, instance_only: bool, since: str | None) -> None:
    """Write instance NAME (stopped or running), its snapshots and its image to the archive FILE
    (through a remote: FILE is on this host, downloaded as the server writes it)."""
    ctx = get_context()
    done = backups().export(name, file, compression=compression,
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
    checksum is verified before anything is registered; it gets a new UUID and new MACs. Through
    a remote, FILE is on this host and is uploaded."""
    ctx = get_context()
    done = backups().import_archive(file, name)
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
