"""`virtkit copy SRC DST [--snapshot SNAP] [--full]`, `virtkit copy --flatten NAME` and
`virtkit publish NAME [--snapshot SNAP] [--alias A]`: clones and images of instances (docs/clones.md).
`virtkit copy SRC REMOTE:NEW` copies to another host (ops/movecold.py; docs/migration.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from virtkit.cli.context import INSTANCE, CliContext, get_context, json_option
from virtkit.cli.output import print_json
from virtkit.cli.params import INSTANCE_NAME, NameType

if TYPE_CHECKING:
    from virtkit.api.remote_snapshots import RemoteCopies, RemotePublisher
    from virtkit.ops.copy import Copies
    from virtkit.ops.publish import Publisher

SNAPSHOT_NAME = NameType("snapshot name")
ALIAS = NameType("image alias")


def copies() -> Copies | RemoteCopies:
    """This host's copy verbs, or those of the remote in effect (api/remote_snapshots.py)."""
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_snapshots import RemoteCopies

        return RemoteCopies(ctx.client())
    from virtkit.ops.copy import Copies

    return Copies(ctx.root, ctx.store())


def publisher() -> Publisher | RemotePublisher:
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_snapshots import RemotePublisher

        return RemotePublisher(ctx.client())
    from virtkit.ops.publish import Publisher

    return Publisher(ctx.root, ctx.store())


@click.command("copy")
@click.argument("source", type=INSTANCE)
@click.argument("target", required=False)
@click.option(
    "--snapshot",
    "snapshot",
    type=SNAPSHOT_NAME,
    metavar="SNAP",
    help="Copy the state of this snapshot of SOURCE (SOURCE may run; it is not touched).",
)
@click.option("--full", is_flag=True, help="An independent copy resting on no shared layer.")
@click.option(
    "--flatten", is_flag=True, help="With one NAME: rewrite NAME's layers into a disk or tree of its own."
)
@json_option
def copy_command(source: str, target: str | None, snapshot: str | None, full: bool, flatten: bool) -> None:
    """Copy instance SOURCE to a new instance TARGET: a linked clone by default (instant: SOURCE's
    disk or writable layer is frozen into a shared read-only layer under both), a full copy with
    --full. SOURCE must be stopped unless --snapshot is given. The clone gets a new UUID, MACs,
    addresses, hostname and machine-id; volumes stay with SOURCE.

    `virtkit copy --flatten NAME` makes a clone independent of its layers. `virtkit copy NAME
    REMOTE:NEW` makes an independent copy on another host (NAME may run)."""
    from virtkit.api.remotes import split_target
    from virtkit.errors import SpecError

    ctx = get_context()
    remote, text = split_target(target) if target is not None else (None, None)
    target = NameType("new instance name").convert(text, None, None) if text is not None else None
    if remote is not None and remote != "local" and remote != ctx.remote_name():
        if flatten or full:
            raise SpecError("a copy to another host is always a full copy: --full and --flatten do not apply")
        assert target is not None
        copy_to_remote(ctx, source, remote, target, snapshot)
        return
    if flatten:
        if target is not None or full or snapshot is not None:
            raise SpecError("--flatten takes one instance and no other option",
                            hint=f"virtkit copy --flatten {source}")  # fmt: skip
        record = copies().flatten(source)
        if ctx.json:
            print_json(record.model_dump(mode="json"))
        else:
            click.echo(f"Instance {source} flattened: it rests on no shared layer now.")
        return
    if target is None:
        raise SpecError("missing TARGET: the new instance's name", hint=f"virtkit copy {source} NEW-NAME")
    copied = copies().copy(source, target, snapshot=snapshot, full=full)
    if ctx.json:
        print_json(copied.to_dict())
        return
    what = "a linked clone" if copied.mode == "linked" else "a full copy"
    origin = f"{source} (snapshot {snapshot})" if snapshot else source
    click.echo(f"Instance {target} created as {what} of {origin}.")
    for note in copied.notes:
        click.echo(f"Note: {note}")


def copy_to_remote(ctx: CliContext, source: str, remote: str, target: str, snapshot: str | None) -> None:
    """SOURCE, on this host, copied as a new instance TARGET of the host REMOTE."""
    from virtkit.cli.move import destination
    from virtkit.errors import SpecError
    from virtkit.ops.movecold import ColdMove

    if ctx.is_remote():
        raise SpecError(f"a copy from remote {ctx.remote_name()!r} to remote {remote!r} is not supported",
                        hint=f"run it on that host: virtkit copy {source} {remote}:{target}")  # fmt: skip
    with destination(ctx, remote) as dest:
        copied = ColdMove(ctx.root, ctx.store(), dest, remote).copy(source, target, snapshot=snapshot)
    if ctx.json:
        print_json(copied.to_dict())
        return
    origin = f"{source} (snapshot {snapshot})" if snapshot else source
    click.echo(f"Instance {remote}:{target} created as a copy of {origin} in {copied.total_s:.2f} s.")
    for note in copied.notes:
        click.echo(f"Note: {note}")


@click.command("publish")
@click.argument("name", type=INSTANCE_NAME)
@click.option("--alias", type=ALIAS, help="The image's alias (default: the instance's name).")
@click.option(
    "--snapshot", "snapshot", type=SNAPSHOT_NAME, metavar="SNAP", help="Publish this snapshot of NAME."
)
@json_option
def publish_command(name: str, alias: str | None, snapshot: str | None) -> None:
    """Make an image of stopped instance NAME (or of its snapshot SNAP) in the image store, for
    `virtkit launch`."""
    ctx = get_context()
    image = publisher().publish(name, alias=alias, snapshot=snapshot)
    if ctx.json:
        print_json(image.model_dump(mode="json"))
        return
    click.echo(f"Image {image.aliases[0] if image.aliases else image.fingerprint[:12]} "
               f"({image.fingerprint[:12]}) published from {name}.")  # fmt: skip
