"""`virtkit move NAME --to REMOTE [--live]`: an instance moved to another host in one command.

Live (a running VM): cli/movelive.py and ops/movelive.py. Cold (VMs and containers): stopped,
streamed with checksums, started there, removed here once it runs there.
"""

from __future__ import annotations

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.params import INSTANCE_NAME
from virtkit.errors import SpecError


def _mapping(values: tuple[str, ...], what: str) -> dict[str, str]:
    mapped: dict[str, str] = {}
    for value in values:
        here, sep, there = value.partition("=")
        if not sep or not here or not there:
            raise SpecError(f"invalid --target-{what} {value!r}: give HERE=THERE",
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
              help="Put NICs on network HERE onto network THERE (repeatable).")  # fmt: skip
@json_option
def move_command(name: str, remote: str, live: bool, downtime_ms: int, postcopy: bool,
                 networks: tuple[str, ...]) -> None:  # fmt: skip
    """Move instance NAME to the host REMOTE (see `virtkit remote add`)."""
    ctx = get_context()
    if ctx.is_remote():
        raise SpecError("virtkit move runs on the instance's own host", hint="run it there, without --remote")
    if remote == "local":
        raise SpecError("--to names another host's remote, not local")
    mapped = _mapping(networks, "network")
    if live:
        from virtkit.cli.movelive import move_live

        move_live(ctx, name, remote, downtime_ms=downtime_ms, postcopy=postcopy, networks=mapped)
        return
    raise SpecError("a cold move is not built yet",
                    hint=f"move a running VM live: virtkit move {name} --to {remote} --live")  # fmt: skip
