"""`virtkit apply|destroy -f FILE` and `virtkit scale GROUP --count N`: stacks of instances."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_json

if TYPE_CHECKING:
    from virtkit.errors import VirtkitError
    from virtkit.ops.stacks import Applied, Plan, Stacks, Step

FILE = click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                    help="The stack file (YAML): networks, volumes, instance groups.")  # fmt: skip
DRY_RUN = click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
PARALLEL = click.option("--parallel", type=click.IntRange(1, 64), default=4, show_default=True,
                        help="Instance steps run at once.")  # fmt: skip


def _stacks() -> Stacks:
    from virtkit.ops.stacks import Stacks

    ctx = get_context()
    return Stacks(ctx.root, ctx.store())


@click.command("apply")
@FILE
@DRY_RUN
@PARALLEL
@json_option
def apply_command(path: Path, dry_run: bool, parallel: int) -> None:
    """Make what exists match the stack file: create, change in place, recreate, delete.

    A second apply of the same file changes nothing and says so. Exit code 1 when a step failed
    (the others still ran), 130 when interrupted (run apply again to finish).
    """
    from virtkit.stackspec import load

    spec, base = load(path)
    plan = _stacks().plan(spec, base, file=str(path.resolve()))
    _run(plan, f"stack {spec.name} ({path})", dry_run, parallel,
         nothing=f"No changes: stack {spec.name} matches {path}.")  # fmt: skip


@click.command("destroy")
@FILE
@DRY_RUN
@PARALLEL
@json_option
def destroy_command(path: Path, dry_run: bool, parallel: int) -> None:
    """Remove what the stack file owns: its instances, and the networks and volumes it created.

    Instances are found by their stack label; nothing else is touched.
    """
    from virtkit.stackspec import load

    spec, base = load(path)
    plan = _stacks().plan_destroy(spec, base)
    _run(plan, f"stack {spec.name} ({path})", dry_run, parallel, nothing=f"Stack {spec.name} owns nothing.")


@click.command("scale")
@click.argument("group")
@click.option("--count", type=click.IntRange(0, 1000), required=True, help="Instances the group should have.")
@click.option("--stack", default=None, help="The stack holding GROUP, when several do.")
@DRY_RUN
@PARALLEL
@json_option
def scale_command(group: str, count: int, stack: str | None, dry_run: bool, parallel: int) -> None:
    """Add or remove instances of an applied stack's group (the newest are removed first).

    The stack keeps this count until its file is applied again.
    """
    plan = _stacks().scale_plan(group, count, stack)
    _run(plan, f"group {group} of stack {plan.spec.name}", dry_run, parallel,
         nothing=f"No changes: group {group} has {count} instance(s).")  # fmt: skip


def _run(plan: Plan, title: str, dry_run: bool, parallel: int, nothing: str) -> None:
    ctx = get_context()
    if not plan.steps:
        if ctx.json:
            print_json({"stack": plan.spec.name, "plan": [], "changed": False})
        else:
            click.echo(nothing)
        return
    if not ctx.json:
        click.echo(f"Plan for {title}:")
        for step in plan.steps:
            click.echo("  " + step.line())
        click.echo(plan.summary())
    if dry_run:
        if ctx.json:
            print_json({"stack": plan.spec.name, "plan": [s.to_dict() for s in plan.steps], "dry_run": True})
        return
    applied = _stacks().apply(plan, parallel=parallel, progress=_Reporter(ctx.json))
    _report(plan, applied, ctx.json)


class _Reporter:
    """One line per step as it ends (lines from parallel steps never interleave)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.started: dict[str, float] = {}
        self.guard = threading.Lock()

    def __call__(self, step: Step, what: str, error: VirtkitError | None) -> None:
        with self.guard:
            if what == "start":
                self.started[step.target] = time.monotonic()
                return
            if self.quiet:
                return
            took = time.monotonic() - self.started.get(step.target, time.monotonic())
            if error is None:
                click.echo(f"  {step.line()}: done ({took:.1f} s)")
            else:
                click.echo(f"  {step.line()}: FAILED: {error.message}", err=True)


def _report(plan: Plan, applied: Applied, as_json: bool) -> None:
    if as_json:
        print_json({
            "stack": plan.spec.name, "plan": [s.to_dict() for s in plan.steps],
            "done": [s.to_dict() for s in applied.done],
            "failed": [{**s.to_dict(), "error": e.to_dict()} for s, e in applied.failed],
            "skipped": [s.to_dict() for s in applied.skipped], "interrupted": applied.interrupted,
        })  # fmt: skip
    else:
        click.echo(f"Applied: {len(applied.done)} done, {len(applied.failed)} failed"
                   + (f", {len(applied.skipped)} not started (interrupted)" if applied.interrupted else "")
                   + ".")  # fmt: skip
    if applied.interrupted:
        if not as_json:
            click.echo("Interrupted: run the same command again to finish.", err=True)
        click.get_current_context().exit(130)
    if applied.failed:
        click.get_current_context().exit(1)
