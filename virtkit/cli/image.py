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
    from virtkit.api.remote_images import RemoteImages
    from virtkit.images.staged import Progress
    from virtkit.model import ImageRecord

ALIAS = NameType("image alias")
ImageList = list["ImageRecord"]
Names = list[str]


class LocalImages:
    """This host's image store, as RemoteImages gives a server's."""

    def __init__(self) -> None:
        ctx = get_context()
        self.root, self.store = ctx.root, ctx.store()

    def list(self) -> list[ImageRecord]:
        from virtkit.ops.images import list_images

        return list_images(self.root, self.store)

    def get(self, ref: str) -> ImageRecord:
        from virtkit.ops.images import get_image

        return get_image(self.root, self.store, ref)

    def path(self, record: ImageRecord) -> Path:
        from virtkit.ops.images import image_store

        return image_store(self.root, self.store).path(record)

    def delete(self, ref: str) -> ImageRecord:
        from virtkit.ops.images import delete_image

        return delete_image(self.root, self.store, ref)

    def add_alias(self, ref: str, alias: str) -> ImageRecord:
        from virtkit.ops.images import add_alias

        return add_alias(self.root, self.store, ref, alias)

    def remove_alias(self, alias: str) -> ImageRecord:
        from virtkit.ops.images import remove_alias

        return remove_alias(self.root, self.store, alias)

    def build_tiny(self, arch: str, progress: Progress) -> ImageRecord:
        from virtkit.ops.images import build_tiny_image

        return build_tiny_image(self.root, self.store, arch=arch, progress=progress)

    def build_debian(self, release: str, packages: Names, arch: str, flavour: str, refresh: bool,
                     progress: Progress) -> ImageList:  # fmt: skip
        from virtkit.ops.images import build_debian_images

        flavours = ("vm", "container") if flavour == "both" else (flavour,)
        return build_debian_images(self.root, self.store, release=release, packages=packages, arch=arch,
                                   flavours=flavours, refresh=refresh, progress=progress)  # fmt: skip


def images() -> LocalImages | RemoteImages:
    """This host's images, or those of the remote in effect."""
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_images import RemoteImages

        return RemoteImages(ctx.client())
    return LocalImages()


def _local_only(what: str) -> None:
    """Refuse a remote for a command whose FILE is this host's: the API has no route for it yet."""
    if get_context().is_remote():
        from virtkit.api.remote_common import refuse

        refuse(what, "its file is on this host, and the API has no image upload or download yet")


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
    ctx = get_context()
    records = images().list()
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
    ctx = get_context()
    verbs = images()
    record = verbs.get(image)
    if ctx.json:
        print_json(record.model_dump(mode="json"))
        return
    path = verbs.path(record)
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
    record = images().delete(image)
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
    record = images().add_alias(image, alias)
    _done(record, f"Alias {alias} now names image {record.fingerprint[:12]}.")


@alias_group.command("remove")
@click.argument("alias", type=ALIAS)
@json_option
def alias_remove_command(alias: str) -> None:
    """Remove the name ALIAS (the image stays)."""
    record = images().remove_alias(alias)
    _done(record, f"Alias {alias} removed.")


@image_group.command("export")
@click.argument("image")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def export_command(image: str, file: Path) -> None:
    """Write IMAGE to FILE, a tar archive `virtkit image import` takes back."""
    from virtkit.cli.progress import progress_display
    from virtkit.ops.images import export

    _local_only("image export")
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

    _local_only("image import")
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

    ctx = get_context()
    verbs = images()
    with progress_display("build tiny", quiet=ctx.json) as progress:
        record = verbs.build_tiny(arch, progress)
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

    ctx = get_context()
    verbs = images()
    wanted = [package.strip() for package in packages.split(",") if package.strip()]
    with progress_display(f"build debian {release}", quiet=ctx.json) as progress:
        records = verbs.build_debian(release, wanted, arch, flavour, refresh, progress)
    _print_added(ctx.json, records, "built")
