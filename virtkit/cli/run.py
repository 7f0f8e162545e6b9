"""`virtkit run [--rm] [--name N] IMAGE [--] COMMAND...`: one command in a new container, like
`podman run`. Its output streams, its exit status becomes virtkit's.

This is the documented command (its --help, its options). The usual `virtkit run` is parsed by
the lean front door (cli/fastrun.py, same grammar, no click) and only comes here for what that one
does not take: --help, an option it does not know, a value it cannot convert.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from virtkit.cli.context import get_context
from virtkit.cli.params import INSTANCE_NAME, SizeType


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog="Exit status: the command's own; 125 when virtkit could not run it; 126 when it cannot be "
    "executed; 127 when the image has no such command; 2 for a bad command line.",
)
@click.option("--rm", "remove", is_flag=True,
              help="Remove the container when the command ends (it is never registered as an instance).")
@click.option("--name", type=INSTANCE_NAME, default=None, help="Name the container (default: run-XXXXXXXX).")
@click.option("--cpus", type=float, default=1, show_default=True, help="CPU quota, in host CPUs (0.5: half).")
@click.option("--memory", type=SizeType("memory size"), default="256MiB", show_default=True,
              help="Memory limit, e.g. 512MiB or 2G (no swap beyond it).")
@click.option("--processes", default=None, metavar="N", help="At most N processes (the pids cgroup).")
@click.option("--env", "-e", multiple=True, metavar="NAME=VALUE", help="Set an environment variable.")
@click.option("--workdir", "-w", default=None, metavar="DIR", help="Working directory of the command.")
@click.option("--tty", "-t", is_flag=True, help="Give the command a terminal.")
@click.option("--cpu-set", default=None, metavar="CPUS", help="Run only on these host CPUs, e.g. 0 or 0-1.")
@click.option("--privileged", is_flag=True,
              help="Turn off the isolation (all capabilities, no seccomp, no user namespace).")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run_command(
    image: str, command: tuple[str, ...], remove: bool, name: str | None, cpus: float, memory: int,
    processes: str | None, env: tuple[str, ...], workdir: str | None, tty: bool, cpu_set: str | None,
    privileged: bool,
) -> None:
    """Run COMMAND in a new container from IMAGE, in the foreground (no COMMAND: the OCI image's own).

    \b
      virtkit run --rm tiny -- uname -a
      virtkit run --rm --memory 64MiB -e GREETING=hi tiny -- sh -c 'echo $GREETING'
    """
    from virtkit.cli.fastrun import execute
    from virtkit.ops.run import RunRequest

    if command[:1] == ("--",):
        command = command[1:]
    request = RunRequest(image=image, command=command, name=name, remove=remove, cpus=cpus, memory=memory,
                         processes=processes, env=env, workdir=workdir, tty=tty, cpu_set=cpu_set,
                         privileged=privileged)  # fmt: skip
    sys.exit(execute(Path(get_context().root), request))
