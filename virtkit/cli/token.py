"""`virtkit token create|list|revoke`: bearer tokens for the API over TCP."""

from __future__ import annotations

import time

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_json, print_table
from virtkit.cli.params import NameType


@click.group("token")
def token_group() -> None:
    """API tokens: each has a role (viewer reads; operator also acts on instances; admin does all)."""


@token_group.command("create")
@click.argument("name", type=NameType("token name"))
@click.option("--role", type=click.Choice(["admin", "operator", "viewer"]), default="viewer",
              show_default=True, help="What the token may do.")
@click.option("--expires", metavar="DURATION", default=None, help="Lifetime, e.g. 30d, 12h (default: never).")
@json_option
def create_command(name: str, role: str, expires: str | None) -> None:
    """Make a token. Its secret is printed once: it is stored hashed and cannot be shown again."""
    from virtkit.ops.tokens import Tokens

    ctx = get_context()
    created = Tokens(ctx.store()).create(name, role=role, expires=expires)
    if ctx.json:
        print_json(created.to_dict())
        return
    click.echo(f"Token {name} ({role}) created. Its secret, shown only now:", err=True)
    click.echo(created.secret)


@token_group.command("list")
@json_option
def list_command() -> None:
    """List tokens (names, roles, expiry, last use; never the secrets)."""
    from virtkit.ops.tokens import Tokens, expired, view

    ctx = get_context()
    records = Tokens(ctx.store()).list()
    if ctx.json:
        print_json([view(record) for record in records])
        return
    rows = [(r.name, r.role.value, _when(r.expires_at) + (" (expired)" if expired(r) else ""),
             _when(r.last_used_at), _when(r.created_at)) for r in records]  # fmt: skip
    print_table(["NAME", "ROLE", "EXPIRES", "LAST USED", "CREATED"], rows, empty="No tokens.")


@token_group.command("revoke")
@click.argument("name", type=NameType("token name"))
@json_option
def revoke_command(name: str) -> None:
    """Revoke a token: the next request that presents it is refused (401)."""
    from virtkit.ops.tokens import Tokens, view

    ctx = get_context()
    record = Tokens(ctx.store()).revoke(name)
    if ctx.json:
        print_json(view(record))
    else:
        click.echo(f"Token {name} revoked.")


def _when(moment: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(moment)) if moment else "-"
