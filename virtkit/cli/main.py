"""The `virtkit` command: global options, the command table, and how errors reach the user.

Errors a user can cause (VirtkitError) print as one or two lines on stderr and exit 2 for usage or
validation problems, 1 for operational failures. A traceback appears only with `--debug`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from virtkit import __version__
from virtkit.cli.basics import default_root, report_error
from virtkit.cli.context import CliContext
from virtkit.cli.lazy import LazyCommand, LazyGroup
from virtkit.errors import VirtkitError


def _lifecycle(name: str, help: str) -> LazyCommand:
    return LazyCommand(name, f"virtkit.cli.lifecycle:{name}_command", help, "Instances")


COMMANDS = [
    _lifecycle("launch", "Create an instance from an image and start it."),
    _lifecycle("create", "Define an instance without starting it."),
    _lifecycle("start", "Start an instance."),
    _lifecycle("stop", "Stop an instance (gracefully, then forced)."),
    _lifecycle("restart", "Stop and start an instance."),
    _lifecycle("pause", "Freeze an instance."),
    _lifecycle("resume", "Unfreeze an instance."),
    _lifecycle("delete", "Delete an instance."),
    _lifecycle("exec", "Run a command inside an instance."),
    LazyCommand(
        "run", "virtkit.cli.run:run_command", "Run one command in a new container, in the foreground.",
        "Instances",
    ),
    LazyCommand(
        "console", "virtkit.cli.console:console_command", "Attach to an instance's console.", "Instances"
    ),
    LazyCommand(
        "logs", "virtkit.cli.console:logs_command", "Print an instance's console output.", "Instances"
    ),
    LazyCommand("list", "virtkit.cli.instance:list_command", "List instances.", "Instances"),
    LazyCommand("show", "virtkit.cli.instance:show_command", "Show one instance.", "Instances"),
    LazyCommand(
        "set", "virtkit.cli.settings:set_command", "Change an instance's CPUs, memory, limits.", "Instances"
    ),
    LazyCommand("file", "virtkit.cli.file:file_group", "Copy files into and out of instances.", "Instances"),
    LazyCommand(
        "network", "virtkit.cli.network:network_group", "Networks: bridges, DHCP/DNS, NAT, forwards.",
        "Networks",
    ),
    LazyCommand(
        "storage", "virtkit.cli.storage:storage_group", "Storage pools and their volumes.", "Storage"
    ),
    LazyCommand(
        "volume", "virtkit.cli.storage:volume_group", "Volumes: VM disks and container directories.",
        "Storage",
    ),
    LazyCommand(
        "snapshot", "virtkit.cli.snapshot:snapshot_group", "Snapshots of instances: create, restore, delete.",
        "Storage",
    ),
    LazyCommand(
        "export", "virtkit.cli.backup:export_command", "Export an instance to a portable archive.", "Storage"
    ),
    LazyCommand(
        "import", "virtkit.cli.backup:import_command", "Import an instance from an archive.", "Storage"
    ),
    LazyCommand(
        "copy", "virtkit.cli.copy:copy_command", "Copy an instance: linked clone, full copy, flatten.",
        "Storage",
    ),
    LazyCommand("publish", "virtkit.cli.copy:publish_command", "Make an image of an instance.", "Images"),
    LazyCommand("image", "virtkit.cli.image:image_group", "Build, import, list and export images.", "Images"),
    LazyCommand(
        "import-vm", "virtkit.cli.v2v:import_vm_command", "Import a VM from VMware, VirtualBox, Xen...",
        "Images",
    ),
    LazyCommand("p2v", "virtkit.cli.p2v:p2v_command", "Copy a running Linux server into a new VM.", "Images"),
    LazyCommand("convert", "virtkit.cli.convert:convert_command", "Make a VM's guest use virtio.", "Images"),
    LazyCommand("move", "virtkit.cli.move:move_command", "Move an instance to another host.", "Instances"),
    LazyCommand("host", "virtkit.cli.host:host_group", "Check and describe this host.", "Host"),
    LazyCommand(
        "operation", "virtkit.cli.operation:operation_group", "Watch long-running operations.", "Server"
    ),
    LazyCommand("apply", "virtkit.cli.stack:apply_command", "Make instances match a stack file.", "Stacks"),
    LazyCommand("destroy", "virtkit.cli.stack:destroy_command", "Remove what a stack file owns.", "Stacks"),
    LazyCommand("scale", "virtkit.cli.stack:scale_command", "Change a stack group's count.", "Stacks"),
    LazyCommand("serve", "virtkit.cli.serve:serve_command", "Serve the REST API.", "Server"),
    LazyCommand("token", "virtkit.cli.token:token_group", "API tokens: create, list, revoke.", "Server"),
    LazyCommand(
        "remote", "virtkit.cli.remote:remote_group", "Remote servers: add, list, remove, switch.", "Server"
    ),
    LazyCommand("monitor", "virtkit.cli.monitor:monitor_command", "Print events as they happen.", "Server"),
]

# What goes through the API client when a remote is in effect; `remote` and `serve` are always
# about this host. Any other command refuses a remote rather than silently acting here.
REMOTE_COMMANDS = frozenset({
    "launch", "create", "start", "stop", "restart", "pause", "resume", "delete", "exec", "list", "show",
    "set", "operation", "monitor", "snapshot", "copy", "publish", "image", "network", "storage", "volume",
    "export", "import", "console", "host",
})  # fmt: skip
HOST_COMMANDS = frozenset({"remote", "serve"})


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", "-V", prog_name="virtkit", message="%(prog)s %(version)s")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_root,
    show_default=f"$VIRTKIT_ROOT or {default_root()}",
    help="State root: where virtkit keeps everything it owns.",
)
@click.option(
    "--remote", metavar="NAME", default=None,
    help="Act on this remote server (`virtkit remote list`); `local` is this host.  "
    "[default: the one of `virtkit remote switch`]",
)  # fmt: skip
@click.option("--json", "json_output", is_flag=True, help="Print JSON documents instead of text.")
@click.option("--debug", is_flag=True, help="Show debug logs and full tracebacks.")
@click.pass_context
def cli(ctx: click.Context, root: Path, remote: str | None, json_output: bool, debug: bool) -> None:
    """virtkit: virtual machines and containers on this Linux server.

    Run `virtkit host check` first to see what this host can do.
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    obj = CliContext(root=root, json=json_output, debug=debug, remote=remote)
    ctx.obj = obj
    ctx.call_on_close(obj.close)
    _check_remote(obj, ctx.invoked_subcommand)


def _check_remote(obj: CliContext, command: str | None) -> None:
    """A remote named with --remote exists; a command that cannot go through one refuses it."""
    if obj.remote is not None:
        from virtkit.units import validate_name

        if obj.remote != "local":
            obj.remotes().get(validate_name(obj.remote, what="remote name"))
    if command is None or command in REMOTE_COMMANDS or command in HOST_COMMANDS or not obj.is_remote():
        return
    from virtkit.errors import SpecError

    given = "--remote" if obj.remote is not None else "the default remote (`virtkit remote switch`)"
    raise SpecError(f"`virtkit {command}` does not work through a remote yet, and {given} is "
                    f"{obj.remote_name()!r}", hint="add --remote local to act on this host")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `virtkit` console script and `python -m virtkit`."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = cli.main(args=args, prog_name="virtkit", standalone_mode=False)
    except click.ClickException as error:
        error.show()
        code = error.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        code = 130
    except VirtkitError as error:
        if debug:
            logging.getLogger(__name__).exception("command failed")
        report_error(error)
        code = error.exit_code
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        code = 130
    except BrokenPipeError:
        # `virtkit list | head`: the reader left; nothing more to say.
        sys.stderr.close()
        code = 1
    except Exception as error:
        if debug:
            raise
        click.echo(f"Error: internal error: {type(error).__name__}: {error}", err=True)
        click.echo("Hint: rerun with --debug for the traceback, and report it as a bug", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
