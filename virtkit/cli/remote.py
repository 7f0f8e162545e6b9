"""`virtkit remote add|list|remove|switch`: the virtkit servers this CLI can act on by name."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from virtkit.cli.context import LOCAL, get_context, json_option
from virtkit.cli.output import print_json, print_table
from virtkit.cli.params import NameType

REMOTE_NAME = NameType("remote name")


@click.group("remote")
def remote_group() -> None:
    """Remote virtkit servers (`virtkit serve` there). `local` is always this host's state root.

    Then `virtkit --remote NAME list`, or `virtkit start NAME:INSTANCE` as Incus writes it.
    Remotes are kept in $VIRTKIT_CONFIG_DIR or ~/.config/virtkit (remotes.json, mode 0600).
    """


@remote_group.command("add")
@click.argument("name", type=REMOTE_NAME)
@click.argument("url", metavar="URL")
@click.option("--token", metavar="TOKEN", default=None,
              help="An API token (`virtkit token create` there); `-` reads it from standard input.")
@click.option("--certificate", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Trust the server's certificate as this PEM file (or the CA that signed it).")
@click.option("--accept-certificate", is_flag=True,
              help="Trust the certificate the server shows, after you checked its fingerprint.")
@json_option
def add_command(name: str, url: str, token: str | None, certificate: Path | None,
                accept_certificate: bool) -> None:  # fmt: skip
    """Add a remote server, checked before it is saved.

    URL is https://HOST[:PORT] (port 8443 by default) or unix:PATH.

    For https without --certificate the server's certificate is fetched and its SHA-256
    fingerprint shown; it is pinned only with --accept-certificate. The remote is saved once it
    has answered with the token.
    """
    from virtkit.api import remotes

    if token == "-":  # kept out of the process list and the shell's history
        token = sys.stdin.readline().strip() or None
    ctx = get_context()
    added = remotes.add(ctx.remotes(), name, url, token=token, certificate=certificate,
                        accept=accept_certificate)  # fmt: skip
    if ctx.json:
        print_json({**added.remote.public(), "fingerprint": added.fingerprint, "server": added.info})
        return
    if added.fingerprint:
        click.echo(f"Certificate fingerprint (SHA-256): {added.fingerprint}", err=True)
    caller = added.info.get("caller") or {}
    who = f" as {caller['name']} ({caller['role']})" if "name" in caller and "role" in caller else ""
    click.echo(f"Remote {name} added: {added.remote.url}{who}.")


@remote_group.command("list")
@json_option
def list_command() -> None:
    """List remotes; the default one is marked."""
    ctx = get_context()
    config = ctx.remotes()
    local = {"name": LOCAL, "url": f"(this host: {ctx.root})", "token": False, "certificate": None,
             "pinned": False}  # fmt: skip
    entries = [local] + [config.remotes[name].public() for name in sorted(config.remotes)]
    if ctx.json:
        print_json([{**entry, "default": entry["name"] == config.default} for entry in entries])
        return
    rows = [
        (str(e["name"]) + (" (default)" if e["name"] == config.default else ""), str(e["url"]),
         "token" if e["token"] else "-",
         ("pinned" if e["pinned"] else "given") if e["certificate"] else "-")
        for e in entries
    ]  # fmt: skip
    print_table(["NAME", "URL", "AUTH", "CERTIFICATE"], rows)


@remote_group.command("remove")
@click.argument("name", type=REMOTE_NAME)
def remove_command(name: str) -> None:
    """Forget a remote, its token and certificate.

    The default remote goes back to local if it was NAME.
    """
    config = get_context().remotes()
    was_default = config.default == name
    config.remove(name)
    click.echo(f"Remote {name} removed." + (" The default remote is local again." if was_default else ""))


@remote_group.command("switch")
@click.argument("name", type=REMOTE_NAME)
def switch_command(name: str) -> None:
    """Make a remote the default one.

    Commands then act on it unless given --remote or REMOTE:INSTANCE; `local` is this host.
    """
    get_context().remotes().switch(name)
    click.echo(f"Default remote: {name}.")
