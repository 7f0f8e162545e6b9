"""`virtkit convert NAME`: a stopped VM's Linux guest made to boot on virtio (docs/convert.md)."""

from __future__ import annotations

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_json
from virtkit.cli.params import INSTANCE_NAME


@click.command("convert")
@click.argument("name", type=INSTANCE_NAME)
@click.option("--dry-run", is_flag=True, help="List the changes; change nothing.")
@json_option
def convert_command(name: str, dry_run: bool) -> None:
    """Convert the stopped VM NAME's Linux guest from emulated devices (AHCI, IDE, e1000) to virtio.

    Offline, in the guest: virtio modules into its initramfs (regenerated), /dev/sdX names in
    fstab and bootloader configs made UUID=, VMware/VirtualBox tools removed, qemu-guest-agent
    enabled, NICs named eth0... by MAC. Then the VM switches to virtio devices. Nothing changes
    when a step fails. See docs/convert.md.
    """
    from virtkit.ops.convert import convert

    ctx = get_context()
    result = convert(ctx.root, ctx.store(), name, dry_run=dry_run)
    if ctx.json:
        print_json(result.to_dict())
        return
    verb = "Would change" if dry_run else "Changed"
    for change in result.changes:
        click.echo(f"{verb}: {change}")
    for note in result.notes:
        click.echo(f"Note: {note}", err=True)
    done = "would be" if dry_run else "is"
    click.echo(f"VM {name} {done} converted ({result.devices_before} -> {result.devices_after} devices, "
               f"{result.seconds:.1f} s)")  # fmt: skip
