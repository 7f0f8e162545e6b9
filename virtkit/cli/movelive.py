"""The live half of `virtkit move NAME --to REMOTE --live` (cli/move.py parses the command): runs
ops/movelive.py against the remote's server and shows its progress on stderr."""

from __future__ import annotations

import sys
import time

import click

from virtkit.cli.context import CliContext
from virtkit.cli.output import print_json
from virtkit.units import format_size


def move_live(ctx: CliContext, name: str, remote: str, *, downtime_ms: int, postcopy: bool,
              networks: dict[str, str]) -> None:  # fmt: skip
    from virtkit.api.remotes import connect
    from virtkit.ops.movelive import LiveMove

    client = connect(ctx.remotes().get(remote))
    try:
        show = _Shown(name, quiet=ctx.json)
        moved = LiveMove(ctx.root, ctx.store(), client, remote).move(
            name, downtime_ms=downtime_ms, postcopy=postcopy, networks=networks, progress=show
        )
    finally:
        client.close()
    show.end()
    if ctx.json:
        print_json(moved.to_dict())
        return
    if moved.recovered == "moved":
        click.echo(f"Instance {name} had already moved to {remote}: removed what was left of it here.")
        return
    if moved.recovered == "resumed":
        click.echo(f"An interrupted move of {name} was undone first (it ran on here).")
    took = " ".join(f"{phase} {seconds:.2f} s" for phase, seconds in moved.phases.items())
    sent = format_size(moved.ram_bytes)
    why = (f"QEMU's downtime {moved.downtime_ms} ms" if moved.memory_copy == "live"
           else "for the whole memory copy: under TCG it is not copied live")  # fmt: skip
    click.echo(f"Instance {name} moved live to {remote} in {moved.total_s:.2f} s ({took}); "
               f"guest paused {moved.paused_ms} ms ({why}), {sent} of memory sent.")  # fmt: skip


class _Shown:
    """Progress lines on stderr, at most twice a second (each phase's first and last always)."""

    def __init__(self, name: str, *, quiet: bool) -> None:
        self.name, self.quiet = name, quiet
        self.phase, self.last, self.line = "", 0.0, ""

    def __call__(self, progress: object) -> None:
        from virtkit.drivers.qemu.migration import Progress

        if self.quiet or not isinstance(progress, Progress):
            return
        if progress.phase == "disks":
            line = f"disks {format_size(progress.disk_done)} of {format_size(progress.disk_total)}"
        else:
            sent, left = format_size(progress.ram_transferred), format_size(progress.ram_remaining)
            line = f"memory {sent} sent, {left} left, {progress.rate_mbps:.0f} Mbit/s"
            if progress.expected_downtime_ms is not None:
                line += f", expected downtime {progress.expected_downtime_ms} ms"
        now = time.monotonic()
        if progress.phase != self.phase or now - self.last >= 0.5:
            self._flush(line, newline=progress.phase != self.phase and bool(self.phase))
            self.phase, self.last = progress.phase, now
        self.line = line

    def _flush(self, line: str, *, newline: bool) -> None:
        if sys.stderr.isatty():
            click.echo(("\n" if newline else "\r") + f"{self.name}: {line}\033[K", err=True, nl=False)
        else:
            click.echo(f"{self.name}: {line}", err=True)

    def end(self) -> None:
        if not self.quiet and self.line:
            self._flush(self.line, newline=False)
            if sys.stderr.isatty():
                click.echo("", err=True)
