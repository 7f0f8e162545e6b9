"""What every command knows from the global options: the state root, JSON output, debug."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from virtkit.cli.basics import default_root

if TYPE_CHECKING:
    from virtkit.store import Store

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliContext:
    root: Path
    json: bool = False
    debug: bool = False
    _store: Store | None = field(default=None, repr=False)

    def store(self) -> Store:
        """The state store under the root, opened on first use (creating the root if allowed)."""
        if self._store is None:
            from virtkit.store import open_store

            self._store = open_store(self.root)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def get_context() -> CliContext:
    obj = click.get_current_context().find_object(CliContext)
    if obj is None:  # a command invoked outside the root group (tests calling it directly)
        obj = CliContext(root=Path(default_root()))
    return obj


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        obj = ctx.find_object(CliContext)
        if obj is not None:
            obj.json = True


def json_option(func: F) -> F:
    """`--json` on a read command: same as the global `virtkit --json`."""
    option = click.option(
        "--json",
        "json_output",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Print a JSON document instead of text.",
    )
    return option(func)
