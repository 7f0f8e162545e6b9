"""`virtkit p2v --from ssh://root@HOST NAME`: a VM made of a running Linux server, or of a dd image."""

from __future__ import annotations

from pathlib import Path

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_json
from virtkit.cli.params import INSTANCE_NAME, SizeType
from virtkit.units import format_size


@click.command("p2v")
@click.argument("name", type=INSTANCE_NAME)
@click.option(
    "--from",
    "source",
    metavar="ssh://[USER@]HOST[:PORT]",
    default=None,
    help="The server to copy, reached with ssh as root.",
)
@click.option(
    "--from-image",
    "image",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A disk image to make the VM of instead: raw (taken with dd), qcow2, VMDK, VDI, VHD(X).",
)
@click.option(
    "--identity",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="KEYFILE",
    help="The ssh private key to log in with (default: ssh's own choice).",
)
@click.option(
    "--known-hosts",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="The known_hosts file to check the server's host key in (default: ~/.ssh/known_hosts).",
)
@click.option(
    "--accept-host-key",
    is_flag=True,
    help="Trust the server's host key if it is not known yet, and remember it (never a changed one).",
)
@click.option(
    "--disks",
    default="auto",
    show_default=True,
    metavar="auto|sda,sdb",
    help="The disks to copy whole: those holding the server's filesystems, or the names given.",
)
@click.option(
    "--filesystem",
    is_flag=True,
    help="Copy the server's files (tar over ssh) into a new disk instead of its disks.",
)
@click.option(
    "--disk",
    "disk_size",
    type=SizeType("disk size"),
    default=None,
    help="The size of the new disk of a --filesystem copy (default: what the files need, +30%).",
)
@click.option("--no-convert", is_flag=True, help="Leave the guest as copied (no virtio drivers added).")
@click.option("--no-start", is_flag=True, help="Leave the VM stopped.")
@click.option("--cpus", type=click.IntRange(1, 288), default=1, show_default=True, help="Virtual CPUs.")
@click.option("--memory", type=SizeType("memory size"), default="1GiB", show_default=True, help="Memory.")
@click.option(
    "--network",
    "networks",
    multiple=True,
    metavar="NAME[,ip=A][,mac=M]",
    help="A NIC on network NAME (repeatable); none: the VM is not connected.",
)
@click.option(
    "--pool", default="default", show_default=True, help="The storage pool of the second and later disks."
)
@json_option
def p2v_command(name: str, source: str | None, image: Path | None, identity: Path | None,
                known_hosts: Path | None, accept_host_key: bool, disks: str, filesystem: bool,
                disk_size: int | None, no_convert: bool, no_start: bool, cpus: int, memory: int,
                networks: tuple[str, ...], pool: str) -> None:  # fmt: skip
    """Copy a running Linux server (or a disk image taken with dd) into a new VM NAME.

    Its disks are copied whole over ssh, or with --filesystem its files into a new disk; a disk
    with a bootloader boots it (BIOS or UEFI), one without boots the server's own kernel and
    initrd from /boot. Then the guest is converted (virtio drivers) and the VM started.
    Nothing is left behind when a step fails. See docs/p2v.md.
    """
    from virtkit.cli.progress import progress_display
    from virtkit.ops.p2v import Options, run
    from virtkit.ops.p2vsource import SshOptions

    ctx = get_context()
    options = Options(
        name=name, source=source, image=image,
        ssh=SshOptions(identity=identity, known_hosts=known_hosts, accept_host_key=accept_host_key),
        disks=disks, filesystem=filesystem, disk_size=disk_size, convert=not no_convert,
        start=not no_start, cpus=cpus, memory=memory, networks=networks, pool=pool,
    )  # fmt: skip
    with progress_display(f"p2v {name}", quiet=ctx.json) as progress:
        result = run(ctx.root, ctx.store(), options, progress)
    if ctx.json:
        print_json(result.to_dict())
        return
    for change in result.changes:
        click.echo(f"Changed: {change}", err=True)
    for note in result.notes:
        click.echo(f"Note: {note}", err=True)
    boots = {
        "bios": "with BIOS firmware from its bootloader",
        "uefi": "with UEFI firmware from its bootloader",
        "direct": "its own kernel and initrd directly",
    }

    copied = f", {format_size(result.copied)} copied" if result.copied else ""
    click.echo(
        f"VM {name} made of {result.source} ({result.mode}{copied}); it boots {boots.get(result.boot, '')}"
    )
    if result.record is not None and result.record.state.value == "running":
        click.echo(f"VM {name} started: virtkit console {name}")
    else:
        click.echo(f"Start it with: virtkit start {name}")
