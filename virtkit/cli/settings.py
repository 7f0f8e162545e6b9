"""`virtkit set NAME KEY=VALUE...`: change an instance's CPUs, memory, CPU allowance, disk limits."""

from __future__ import annotations

import click

from virtkit.cli.context import INSTANCE, get_context, json_option
from virtkit.cli.output import print_json


@click.command("set")
@click.argument("name", type=INSTANCE)
@click.argument("settings", nargs=-1, required=True, metavar="KEY=VALUE...")
@json_option
def set_command(name: str, settings: tuple[str, ...]) -> None:
    """Change settings of instance NAME, live where it runs and the kind allows.

    \b
    Keys (an empty value goes back to the default):
      cpus=N               vCPUs (a running VM: at its next start)
      memory=SIZE          RAM; a running VM shrinks (balloon) down to it, or grows
                           back up to what it booted with
      cpu.allowance=50%    hard quota of host CPU time (50% = half a host CPU; or 25ms/100ms)
      disk.iops=N          root disk I/O operations per second
      disk.bandwidth=SIZE  root disk bytes per second, e.g. 10MiB
      snapshots.schedule=@daily        when `virtkit snapshot prune` takes one (@hourly,
                                       @daily, @weekly, or cron such as "0 */6 * * *")
      snapshots.expiry=7d              how long scheduled snapshots are kept (30m, 12h, 2w)
      snapshots.pattern=auto-%Y%m%d    their names (strftime)
      snapshots.schedule.stopped=true  take them of a stopped instance too

    Example: virtkit set web1 memory=192MiB cpu.allowance=50%
    """
    from virtkit.cli.lifecycle import settings as seam
    from virtkit.ops.settings import parse_assignments

    assignments = parse_assignments(settings)
    ctx = get_context()
    record, live = seam().set(name, assignments)
    if ctx.json:
        print_json({**record.model_dump(mode="json"), "applied_live": live})
        return
    when = "now" if live else "at its next start"
    click.echo(f"Instance {name}: {', '.join(f'{k}={v}' for k, v in assignments.items())} ({when}).")
