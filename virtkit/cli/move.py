"""`virtkit move NAME --to REMOTE [--live]`: an instance moved to another host in one command.

Live (a running VM): cli/movelive.py and ops/movelive.py. Cold (VMs and containers): stopped,
streamed with checksums, started there, removed here once it runs there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from virtkit.cli.context import CliContext, get_context, json_option
from virtkit.cli.output import print_json
from virtkit.cli.params import INSTANCE_NAME
from virtkit.errors import SpecError
from virtkit.units import format_size

if TYPE_CHECKING:
    from virtkit.ops.movedest import ApiDestination


def _mapping(values: tuple[str, ...], what: str) -> dict[str, str]:
    """HERE=THERE pairs; a bare THERE (cold moves) maps every network to it ("*")."""
    mapped: dict[str, str] = {}
    for value in values:
        here, sep, there = value.partition("=")
        if not sep:
            here, there = "*", value
        if not here or not there:
            raise SpecError(f"invalid --target-{what} {value!r}: give HERE=THERE (or THERE)",
                            hint=f"--target-{what} lan=lan2")  # fmt: skip
        mapped[here] = there
    return mapped


@click.command("move")
@click.argument("name", type=INSTANCE_NAME)
@click.option("--to", "remote", required=True, metavar="REMOTE", help="The remote to move it to.")
@click.option("--live", is_flag=True, help="Move a running VM without stopping it.")
@click.option("--downtime", "downtime_ms", type=click.IntRange(1, 60_000), default=50, show_default=True,
              metavar="MS", help="Live: the longest pause of the guest the switchover may take.")  # fmt: skip
@click.option("--postcopy", is_flag=True, help="Live: switch to post-copy if RAM does not converge.")
@click.option("--target-network", "networks", multiple=True, metavar="HERE=THERE",
              help="Put NICs on network HERE onto network THERE (repeatable; cold: THERE alone: "
                   "all of them).")  # fmt: skip
@click.option("--target-pool", "pool", metavar="POOL",
              help="Cold: the storage pool there (checked; volumes are not moved yet).")  # fmt: skip
@json_option
def move_command(name: str, remote: str, live: bool, downtime_ms: int, postcopy: bool,
                 networks: tuple[str, ...], pool: str | None) -> None:  # fmt: skip
    """Move instance NAME to the host REMOTE (see `virtkit remote add`).

    Without --live (VMs and containers, running or stopped): stopped, streamed with checksums,
    imported there with its UUID, MACs and addresses, started there if it ran, and removed here
    only once it runs there; any failure before that puts it back. Interrupted: run it again."""
    ctx = get_context()
    if ctx.is_remote():
        raise SpecError("virtkit move runs on the instance's own host", hint="run it there, without --remote")
    if remote == "local":
        raise SpecError("--to names another host's remote, not local")
    mapped = _mapping(networks, "network")
    if live:
        from virtkit.cli.movelive import move_live
        from virtkit.ops.movelive import cold_instead

        notice = cold_instead(ctx.store(), name)
        if notice is not None:
            click.echo(f"Note: {notice}", err=True)
            move_cold(ctx, name, remote, networks=mapped, pool=pool)
            return

        if "*" in mapped:
            raise SpecError("a live move maps networks as HERE=THERE", hint="--target-network lan=lan2")
        move_live(ctx, name, remote, downtime_ms=downtime_ms, postcopy=postcopy, networks=mapped)
        return
    move_cold(ctx, name, remote, networks=mapped, pool=pool)


SAID = {"precopy": "pre-copied there while it ran", "stop": "stopped here",
        "transfer": "sent and imported there", "start": "running there",
        "remove": "removed here"}  # fmt: skip


def move_cold(ctx: CliContext, name: str, remote: str, *, networks: dict[str, str], pool: str | None) -> None:
    from virtkit.ops.movecold import ColdMove

    def said(phase: str, seconds: float) -> None:
        if not ctx.json:
            click.echo(f"{name}: {SAID.get(phase, phase)} ({seconds:.2f} s)", err=True)

    with destination(ctx, remote) as dest:
        moved = ColdMove(ctx.root, ctx.store(), dest, remote, said=said).move(
            name, networks=networks, pool=pool
        )
    if ctx.json:
        print_json(moved.to_dict())
        return
    if moved.recovered == "moved":
        click.echo(f"Instance {name} had already moved to {remote}: finished removing it here.")
        return
    if moved.recovered == "resumed":
        click.echo(f"An interrupted move of {name} was undone first.")
    down = f"; downtime {moved.downtime_s:.2f} s" if moved.downtime_s is not None else " (it stays stopped)"
    sent = f"{format_size(moved.bytes)} sent"
    if moved.precopy_bytes:
        ran, stopped = format_size(moved.precopy_bytes), format_size(moved.bytes)
        sent = f"{ran} sent while it ran, {stopped} once stopped"
    click.echo(f"Instance {name} moved to {remote} in {moved.total_s:.2f} s{down}, {sent}.")
    for nic in moved.nics:
        click.echo(f"  {nic.get('network')}: {nic.get('mac')} {nic.get('ip')}")
    for note in moved.notes:
        click.echo(f"Note: {note}")


@contextlib.contextmanager
def destination(ctx: CliContext, remote: str) -> Iterator[ApiDestination]:
    """The remote `remote` as ops/movecold.py sees a destination (its API and streams)."""
    from virtkit.api.streams import Streams
    from virtkit.ops.movedest import ApiDestination

    saved = ctx.remotes().get(remote)
    streams = Streams(saved.url, token=saved.token, certificate=saved.certificate, pinned=saved.pinned)
    try:
        yield ApiDestination(streams)
    finally:
        streams.close()
