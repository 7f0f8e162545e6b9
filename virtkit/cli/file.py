"""`virtkit file push|pull`: copy one file into an instance or out of it (as `incus file push/pull`,
`pct push/pull`).

The instance side is written NAME/PATH (the path starts at the first slash: c1/etc/hosts is
/etc/hosts in c1), or NAME:PATH as `docker cp` and scp write it (the path must then be absolute).
The local side `-` is standard input (push) or standard output (pull).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_json
from virtkit.errors import SpecError
from virtkit.units import validate_name

if TYPE_CHECKING:
    from virtkit.ops.files import Files, Transfer


def split_target(text: str) -> tuple[str, str]:
    """NAME/PATH or NAME:PATH -> (name, path inside)."""
    cuts = [at for at in (text.find("/"), text.find(":")) if at >= 0]
    if not cuts or min(cuts) == 0:
        raise SpecError(f"expected NAME/PATH (an instance and a path inside it), not {text!r}",
                        hint="e.g. web1/etc/hosts")  # fmt: skip
    cut = min(cuts)
    name = validate_name(text[:cut])
    return name, text[cut:] if text[cut] == "/" else text[cut + 1 :]


def _files() -> Files:
    from virtkit.ops.files import Files

    ctx = get_context()
    return Files(ctx.root, ctx.store())


def _say(done: Transfer, message: str) -> None:
    if get_context().json:
        print_json(done.to_dict())
    else:
        click.echo(message)


@click.group("file")
def file_group() -> None:
    """Copy files into and out of instances (containers in any state, VMs while they run)."""


@file_group.command("push")
@click.argument("local", metavar="LOCALFILE")
@click.argument("target", metavar="NAME/PATH")
@click.option("--uid", type=int, default=0, show_default=True, help="Owner: a uid as the instance sees it.")
@click.option("--gid", type=int, default=0, show_default=True, help="Group: a gid as the instance sees it.")
@click.option("--mode", default="0644", show_default=True, help="Permission bits, in octal.")
@json_option
def push_command(local: str, target: str, uid: int, gid: int, mode: str) -> None:
    """Copy LOCALFILE (- for standard input) to PATH inside instance NAME.

    The file there is replaced atomically (a symlink there is replaced, not followed); its
    directory must exist. Owner and mode are set as given, root:root 0644 by default.

    \b
    Examples:
      virtkit file push app.conf web1/etc/app.conf --mode 0600
      tar -cf - site | virtkit file push - web1/tmp/site.tar
    """
    from virtkit.ops.files import parse_mode
    from virtkit.units import format_size

    name, path = split_target(target)
    bits = parse_mode(mode)
    source = sys.stdin.buffer if local == "-" else Path(local)
    done = _files().push(name, path, source, uid=uid, gid=gid, mode=bits)
    _say(done, f"Pushed {format_size(done.size)} to {name}:{path}.")


@file_group.command("pull")
@click.argument("target", metavar="NAME/PATH")
@click.argument("local", metavar="LOCALFILE")
@json_option
def pull_command(target: str, local: str) -> None:
    """Copy the file PATH inside instance NAME to LOCALFILE (- for standard output).

    Only regular files can be pulled (symlinks inside the instance are followed, inside it).
    LOCALFILE may be a directory: the file keeps its name there. It appears once complete.

    \b
    Examples:
      virtkit file pull web1/etc/hosts ./hosts
      virtkit file pull web1/var/log/app.log - | tail
    """
    from virtkit.units import format_size

    name, path = split_target(target)
    if local == "-":
        stdout = sys.stdout.buffer
        _files().pull(name, path, stdout)
        stdout.flush()
        return
    done = _files().pull(name, path, Path(local))
    _say(done, f"Pulled {format_size(done.size)} from {name}:{path} to {done.local}.")
