"""A click group whose commands are imported only when used, listed in sections in `--help`.

Each command is registered by its import path and a one-line help, so `virtkit --help` and
`virtkit --version` import no command module at all: that keeps light commands fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class LazyCommand:
    name: str
    target: str  # "package.module:attribute"
    help: str
    section: str


class LazyGroup(click.Group):
    """A group of lazily imported commands, shown by section."""

    def __init__(self, *args: object, lazy: list[LazyCommand] | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = {entry.name: entry for entry in lazy or []}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = self.lazy.get(cmd_name)
        if entry is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = entry.target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{entry.target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for entry in self.lazy.values():
            sections.setdefault(entry.section, []).append((entry.name, entry.help))
        for name in super().list_commands(ctx):
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                sections.setdefault("Other", []).append((name, command.get_short_help_str()))
        for section, rows in sections.items():
            with formatter.section(section):
                formatter.write_dl(sorted(rows))
