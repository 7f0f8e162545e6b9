"""Progress display for long commands: a bar on a terminal, phase lines otherwise, nothing with --json."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from virtkit.images.staged import Progress, no_progress


@contextmanager
def progress_display(title: str, *, quiet: bool) -> Iterator[Progress]:
    """Yield a Progress callback showing `title` and each phase, as fits where output goes."""
    if quiet:
        yield no_progress
        return
    if not sys.stderr.isatty():
        last = [""]

        def lines(what: str, _fraction: float | None) -> None:
            if what != last[0]:
                last[0] = what
                click.echo(f"{title}: {what}", err=True)

        yield lines
        return
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(title, total=1.0)

        def update(what: str, fraction: float | None) -> None:
            bar.update(task, description=f"{title}: {what}", completed=fraction or 0.0)

        yield update
