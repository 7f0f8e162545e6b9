"""`virtkit image ...`: list, show, delete, alias, export, build and import images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_fields, print_json, print_table
from virtkit.cli.params import NameType
from virtkit.units import format_size

if TYPE_CHECKING:
    from virtkit.model import ImageRecord

ALIAS = NameType("image alias")


@click.group("image")
def image_group() -> None:
    """Images instances are made from: build, import, list, export."""


def _row(r: ImageRecord) -> tuple[str, ...]:
    kinds = ",".join(kind.value for kind in r.kinds)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
    aliases = ",".join(r.aliases) or "-"
    return (aliases, r.fingerprint[:12], kinds, r.arch, r.format, format_size(r.size), when)


@image_group.command("list")
@json_option
def list_command() -> None:
    """List images: aliases, fingerprint, kinds, architecture, format, size."""
    from virtkit.ops.images import list_images

    ctx = get_context()
    records = list_images(ctx.root, ctx.store())
    if ctx.json:
        print_json([record.model_dump(mode="json") for record in records])
        return
    print_table(
        ["ALIASES", "FINGERPRINT", "KINDS", "ARCH", "FORMAT", "SIZE", "CREATED"],
        [_row(record) for record in records],
        empty="No images. Build one with `virtkit image build tiny`.",
    )


@image_group.command("show")
@click.argument("image")
@json_option
def show_command(image: str) -> None:
    """Show one image (by alias or fingerprint prefix)."""
    from virtkit.ops.images import get_image, image_store

    ctx = get_context()
    record = get_image(ctx.root, ctx.store(), image)
    if ctx.json:
        print_json(record.model_dump(mode="json"))
        return
    path = image_store(ctx.root, ctx.store()).path(record)
    fields = [
        ("Fingerprint", record.fingerprint),
        ("Aliases", ", ".join(record.aliases) or "-"),
        ("Name", record.name),
        ("Kinds", ", ".join(kind.value for kind in record.kinds)),
        ("Architecture", record.arch),
        ("Format", record.format),
        ("Size on disk", format_size(record.size)),
        ("Virtual size", format_size(record.virtual_size) if record.virtual_size else "-"),
        ("Source", record.source),
        ("Created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created_at))),
    ]
    fields += [(f"File {role}", str(path / name)) for role, name in sorted(record.files.items())]
    fields += [(f"Container {key}", str(value)) for key, value in sorted(record.container.items())]
    fields += [(f"Property {key}", value) for key, value in sorted(record.properties.items())]
    print_fields(fields)


def _done(record: ImageRecord, message: str) -> None:
    """What a changing command prints: a sentence, or the image's record with --json."""
    if get_context().json:
        print_json(record.model_dump(mode="json"))
    else:
        click.echo(message)


@image_group.command("delete")
@click.argument("image")
@json_option
def delete_command(image: str) -> None:
    """Delete an image; refused while instances use it."""
    from virtkit.ops.images import delete_image

    ctx = get_context()
    record = delete_image(ctx.root, ctx.store(), image)
    _done(record, f"Image {record.fingerprint[:12]} deleted.")


@image_group.group("alias")
def alias_group() -> None:
    """Name images."""


@alias_group.command("add")
@click.argument("image")
@click.argument("alias", type=ALIAS)
@json_option
def alias_add_command(image: str, alias: str) -> None:
    """Give IMAGE the name ALIAS."""
    from virtkit.ops.images import add_alias

    ctx = get_context()
    record = add_alias(ctx.root, ctx.store(), image, alias)
    _done(record, f"Alias {alias} now names image {record.fingerprint[:12]}.")


@alias_group.command("remove")
@click.argument("alias", type=ALIAS)
@json_option
def alias_remove_command(alias: str) -> None:
    """Remove the name ALIAS (the image stays)."""
    from virtkit.ops.images import remove_alias

    ctx = get_context()
    record = remove_alias(ctx.root, ctx.store(), alias)
    _done(record, f"Alias {alias} removed.")


@image_group.command("export")
@click.argument("image")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def export_command(image: str, file: Path) -> None:
    """Write IMAGE to FILE, a tar archive `virtkit image import` takes back."""
    from virtkit.cli.progress import progress_display
    from virtkit.ops.images import export

    ctx = get_context()
    with progress_display("export", quiet=ctx.json) as progress:
        dest = export(ctx.root, ctx.store(), image, file, progress)
    if ctx.json:
        print_json({"path": str(dest)})
    else:
        click.echo(f"Image exported to {dest}.")


def _print_added(ctx_json: bool, records: list[ImageRecord], verb: str) -> None:
    if ctx_json:
        print_json([record.model_dump(mode="json") for record in records])
        return
    for record in records:
        kinds = ", ".join(kind.value for kind in record.kinds)
        click.echo(
            f"Image {','.join(record.aliases)} ({record.fingerprint[:12]}) {verb}: {kinds}, "
            f"{record.arch}, {format_size(record.size)} on disk."
        )


@image_group.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="Alias of the new image (default: from the file name).")
@click.option(
    "--format",
    "fmt",
    help="Say what the file is (qcow2, raw, vmdk, vdi, vhd, vhdx, iso, tar); checked against its bytes.",
)
@json_option
def import_command(path: Path, name: str | None, fmt: str | None) -> None:
    """Import a disk image (qcow2, raw, VMDK, VDI, VHD, VHDX), an ISO, a rootfs tarball, an OCI
    layout or archive, a `docker save` archive, or an archive made by `virtkit image export`."""
    from virtkit.cli.progress import progress_display
    from virtkit.ops.images import import_image

    ctx = get_context()
    with progress_display(f"import {path.name}", quiet=ctx.json) as progress:
        record = import_image(ctx.root, ctx.store(), path, name=name, fmt=fmt, progress=progress)
    _print_added(ctx.json, [record], "imported")


@image_group.group("build")
def build_group() -> None:
    """Build images here: the tiny test guest, or Debian by debootstrap."""


ARCH_OPTION = click.option(
    "--arch",
    type=click.Choice(["x86_64", "aarch64"]),
    default="x86_64",
    show_default=True,
    help="Guest architecture (aarch64 runs emulated on x86_64 hosts).",
)


@build_group.command("tiny")
@ARCH_OPTION
@json_option
def build_tiny_command(arch: str) -> None:
    """Build `tiny`: a busybox guest with Debian's kernel, as a VM (kernel, initrd, disk) and a container."""
    from virtkit.cli.progress import progress_display
    from virtkit.ops.images import build_tiny_image

    ctx = get_context()
    with progress_display("build tiny", quiet=ctx.json) as progress:
        record = build_tiny_image(ctx.root, ctx.store(), arch=arch, progress=progress)
    _print_added(ctx.json, [record], "built")


@build_group.command("debian")
@click.option("--release", default="bookworm", show_default=True, help="Debian release (codename).")
@click.option("--packages", default="", metavar="A,B,...", help="More packages to install.")
@click.option(
    "--flavour",
    type=click.Choice(["vm", "container", "both"]),
    default="both",
    show_default=True,
    help="Build the VM image, the container image, or both.",
)
@click.option("--refresh", is_flag=True, help="Debootstrap again instead of using the cached tree.")
@ARCH_OPTION
@json_option
def build_debian_command(release: str, packages: str, flavour: str, refresh: bool, arch: str) -> None:
    """Build Debian by debootstrap: systemd, networkd (DHCP), SSH, qemu-guest-agent, cloud-init."""
    from virtkit.cli.progress import progress_display
    from virtkit.ops.images import build_debian_images

    ctx = get_context()
    flavours = ("vm", "container") if flavour == "both" else (flavour,)
    wanted = [package.strip() for package in packages.split(",") if package.strip()]
    with progress_display(f"build debian {release}", quiet=ctx.json) as progress:
        records = build_debian_images(
            ctx.root,
            ctx.store(),
            release=release,
            packages=wanted,
            arch=arch,
            flavours=flavours,
            refresh=refresh,
            progress=progress,
        )
    _print_added(ctx.json, records, "built")
