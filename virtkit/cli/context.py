"""What every command knows from the global options: the state root, JSON output, debug, and the
remote (`--remote NAME`, a `NAME:INSTANCE` argument, or the default of `virtkit remote switch`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from virtkit.cli.basics import default_root
from virtkit.cli.params import NameType

if TYPE_CHECKING:
    from virtkit.api.client import Client
    from virtkit.api.remotes import Config
    from virtkit.store import Store

LOCAL = "local"  # the remote that is this host's state root

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliContext:
    root: Path
    json: bool = False
    debug: bool = False
    remote: str | None = None  # --remote NAME, as given
    _addressed: str | None = field(default=None, repr=False)  # the REMOTE of a REMOTE:INSTANCE argument
    _store: Store | None = field(default=None, repr=False)
    _remotes: Config | None = field(default=None, repr=False)
    _client: Client | None = field(default=None, repr=False)

    def store(self) -> Store:
        """The state store under the root, opened on first use (creating the root if allowed)."""
        if self._store is None:
            from virtkit.store import open_store

            self._store = open_store(self.root)
        return self._store

    def remotes(self) -> Config:
        """The remotes this CLI knows (api/remotes.py), read on first use."""
        if self._remotes is None:
            from virtkit.api.remotes import Config

            self._remotes = Config.load()
        return self._remotes

    def address(self, remote: str) -> None:
        """A `REMOTE:INSTANCE` argument names where the command acts."""
        from virtkit.errors import SpecError

        for other, said in ((self.remote, "--remote"), (self._addressed, "another argument")):
            if other is not None and other != remote:
                raise SpecError(f"remote {remote!r} addressed, but {said} says {other!r}",
                                hint="one command acts on one remote")  # fmt: skip
        self._addressed = remote

    def remote_name(self) -> str:
        """Where the command acts: `local` (this host's state root) or a remote's name."""
        if self._addressed is not None:
            return self._addressed
        if self.remote is not None:
            return self.remote
        return self.remotes().default

    def is_remote(self) -> bool:
        return self.remote_name() != LOCAL

    def client(self) -> Client:
        """The API client of the remote in effect, connected on first use."""
        if self._client is None:
            from virtkit.api.remotes import connect

            self._client = connect(self.remotes().get(self.remote_name()))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
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


class TargetType(NameType):
    """An instance as `NAME` or, as Incus addresses it, `REMOTE:NAME` (which sets the remote)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if ":" in text:
            from virtkit.api.remotes import split_target

            remote, text = split_target(text)
            obj = ctx.find_object(CliContext) if ctx is not None else None
            if remote is not None and obj is not None:
                obj.address(remote)
        return super().convert(text, param, ctx)


INSTANCE = TargetType()
