"""`virtkit import-vm FILE`: a VM from an OVA, OVF, VMX, VBOX, XVA, or a bare VMDK/VDI/VHD/VHDX disk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_json
from virtkit.cli.params import INSTANCE_NAME, SizeType
from virtkit.units import format_size

if TYPE_CHECKING:
    from virtkit.ops.v2v import Plan
    from virtkit.ops.v2vimport import Imported

_BUSES = {
    "ide": "IDE",
    "sata": "SATA",
    "scsi": "SCSI",
    "nvme": "NVMe",
    "virtio": "virtio",
    "xen": "Xen PV",
    "unknown": "an unknown controller",
}


@click.command("import-vm")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", type=INSTANCE_NAME, default=None, help="The VM's name (default: from the source).")
@click.option(
    "--cpus", type=click.IntRange(1, 288), default=None, help="Virtual CPUs (default: the source's)."
)
@click.option("--memory", type=SizeType("memory size"), default=None, help="Memory (default: the source's).")
@click.option(
    "--firmware",
    type=click.Choice(["bios", "uefi"]),
    default=None,
    help="Boot firmware (default: the source's, else bios).",
)
@click.option(
    "--devices",
    type=click.Choice(["virtio", "emulated"]),
    default=None,
    help="Device models (default: virtio only when the source's were).",
)
@click.option(
    "--network",
    "networks",
    multiple=True,
    metavar="NAME",
    help="The network of the source's next NIC (repeatable, in order); NICs without one are not connected.",
)
@click.option(
    "--pool", default="default", show_default=True, help="Storage pool of the second and later disks."
)
@click.option("--no-convert", "no_convert", is_flag=True,
              help="Keep a guest given emulated devices as it is (no `virtkit convert`).")
@click.option("--dry-run", is_flag=True, help="Print what was found and the plan; make nothing.")
@json_option
def import_vm_command(
    file: Path,
    name: str | None,
    cpus: int | None,
    memory: int | None,
    firmware: str | None,
    devices: str | None,
    networks: tuple[str, ...],
    pool: str,
    no_convert: bool,
    dry_run: bool,
) -> None:
    """Import a VM from another hypervisor: VMware (OVA, OVF, VMX+VMDK), VirtualBox (OVA, OVF,
    VBOX+VDI), XenServer (XVA), Hyper-V or Xen (VHD, VHDX), or a bare disk image.

    The VM gets the source's CPUs, memory, firmware and disks, and emulated devices (AHCI, e1000)
    unless the source's were virtio. It is created stopped: `virtkit start NAME`.
    """
    from virtkit.cli.progress import progress_display
    from virtkit.ops.v2v import Options, plan, run

    ctx = get_context()
    options = Options(
        name=name, cpus=cpus, memory=memory, firmware=firmware, devices=devices, networks=networks, pool=pool,
        convert=not no_convert,
    )
    planned = plan(ctx.root, ctx.store(), file, options)
    if dry_run:
        if ctx.json:
            print_json({"plan": planned.to_dict(), "dry_run": True})
        else:
            _show_plan(planned)
        return
    if not ctx.json:
        _show_plan(planned)
    with progress_display(f"import-vm {file.name}", quiet=ctx.json) as progress:
        imported = run(ctx.root, ctx.store(), planned, progress)
    if ctx.json:
        print_json(_document(imported))
        return
    for note in imported.notes:
        click.echo(f"Note: {note}", err=True)
    click.echo(f"VM {planned.name} imported; start it with: virtkit start {planned.name}")


def _show_plan(plan: Plan) -> None:
    found = plan.source.hardware
    click.echo(
        f"Found: {found.source} {plan.source.kind.upper()} {plan.source.path.name}"
        + (f" (VM {found.name!r})" if found.name else "")
        + (f", guest {found.os}" if found.os else "")
    )
    click.echo(
        f"  CPUs {found.cpus or 'not said'}, "
        f"memory {format_size(found.memory) if found.memory else 'not said'}, "
        f"firmware {found.firmware or 'not said'}"
    )
    for index, disk in enumerate(found.disks, 1):
        controller = f" ({disk.controller})" if disk.controller else ""
        click.echo(
            f"  disk {index}: {disk.file} on {_BUSES.get(disk.bus, disk.bus)}{controller}"
            + (f", {format_size(disk.capacity)}" if disk.capacity else "")
        )
    for index, nic in enumerate(found.nics, 1):
        click.echo(
            f"  NIC {index}: {nic.model}"
            + (f" on {nic.network!r}" if nic.network else "")
            + (f", MAC {nic.mac}" if nic.mac else "")
        )
    click.echo(
        f"Plan: VM {plan.name}: {plan.cpus} CPU(s), {format_size(plan.memory)}, "
        f"{plan.firmware} firmware, machine q35, {plan.devices} devices"
    )
    for index, target in enumerate(plan.disks, 1):
        where = (
            f"root disk (image {plan.name})"
            if target.target == "root"
            else f"volume {plan.pool}/{target.volume}"
        )
        click.echo(f"  disk {index} -> {where}, {target.bus.upper() if target.bus == 'ahci' else target.bus}")
    for index, mapped in enumerate(plan.nics, 1):
        on = f"on network {mapped.network}" if mapped.network else "not connected"
        click.echo(
            f"  NIC {index} -> {mapped.model} {on}"
            + (f", MAC {mapped.mac} kept" if mapped.mac and mapped.network else "")
        )
    for note in plan.notes:
        click.echo(f"  note: {note}")


def _document(imported: Imported) -> dict[str, object]:
    return {
        "plan": imported.plan.to_dict(),
        "instance": imported.record.model_dump(mode="json"),
        "image": imported.image.fingerprint,
        "volumes": [f"{v.pool}/{v.name}" for v in imported.volumes],
        "notes": imported.notes,
    }
