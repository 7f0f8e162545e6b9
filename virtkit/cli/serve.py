"""`virtkit serve`: run the REST API server for this state root."""

from __future__ import annotations

from pathlib import Path

import click

from virtkit.cli.context import get_context


@click.command("serve")
@click.option("--listen", metavar="unix:PATH|HOST:PORT", default=None,
              help="Where to listen. [default: unix:ROOT/unix.socket, for root and the virtkit group]")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM certificate for HOST:PORT (default: a self-signed one made under ROOT/server/).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM private key of --tls-cert.")
@click.option("--prune-every", type=click.IntRange(0, 86400), default=60, show_default=True,
              metavar="SECONDS",
              help="Apply snapshot schedules and expiry (`snapshot prune --all`) this often; 0: never.")
def serve_command(listen: str | None, tls_cert: Path | None, tls_key: Path | None, prune_every: int) -> None:
    """Serve the REST API (/1.0/) until interrupted.

    Over the Unix socket every caller is trusted (the socket's mode decides who may connect); over
    TCP every request needs a token (`virtkit token create`) and TLS is always on. The server
    also takes scheduled snapshots and deletes expired ones (--prune-every).
    """
    from virtkit.api.server import parse_listen, serve

    ctx = get_context()
    where = parse_listen(listen, ctx.root)
    serve(ctx.root, ctx.store(), where, cert=tls_cert, key=tls_key,
          on_ready=lambda line: click.echo(f"virtkit API {line}", err=True),
          prune_every=prune_every or None)  # fmt: skip
