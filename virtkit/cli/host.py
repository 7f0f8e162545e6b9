"""`virtkit host check`: what this host can run, each fact with its meaning and its remedy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_json
from virtkit.cli.params import SizeType

if TYPE_CHECKING:
    from virtkit.host import Report

COLOURS = {"PASS": "green", "WARN": "yellow", "FAIL": "red", "INFO": "blue"}


@click.group("host")
def host_group() -> None:
    """Check and describe this host."""


@host_group.command("check")
@click.option(
    "--min-free",
    type=SizeType("--min-free size", minimum=0),
    default="10GiB",
    show_default=True,
    help="Warn when the state root's filesystem has less free space than this (not through a remote).",
)
@json_option
def check_command(min_free: int) -> None:
    """Check that this host can run VMs and containers, and say how to fix what it lacks.

    Exit code: 0 everything required is there, 1 something required fails, 2 the check cannot run.
    """
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_host import RemoteHost

        source = click.get_current_context().get_parameter_source("min_free")
        if source is not None and source.name != "DEFAULT":
            from virtkit.api.remote_common import refuse

            refuse("host check --min-free", "the server checks with its own threshold (10GiB)")
        report = RemoteHost(ctx.client()).check()
    else:
        from virtkit.ops.host import check_host

        report = check_host(ctx.root, min_free=min_free)
    if ctx.json:
        print_json(report.to_dict())
    else:
        _render(report)
    if report.exit_code:
        click.get_current_context().exit(report.exit_code)


def _render(report: Report) -> None:
    host = report.host
    guest = ", itself a virtual machine" if host.hypervisor else ""
    click.echo(click.style(f"Host: {host.cpu_model} ({host.cpus} CPUs{guest}), {host.arch}", bold=True))
    width = max(len(check.id) for check in report.checks)
    for check in report.checks:
        status = str(check.status)
        label = click.style(f"{status:<4}", fg=COLOURS.get(status), bold=True)
        click.echo(f"{label}  {check.id:<{width}}  {check.summary}")
        if check.remedy and status != "PASS":
            click.echo(f"      {'':<{width}}  fix: {check.remedy}")
    click.echo()
    click.echo(click.style(report.verdict.summary_line(), bold=True))
