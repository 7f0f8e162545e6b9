"""`virtkit storage pool ...` and `virtkit volume ...`: storage pools and the volumes in them.

`virtkit storage volume ...` is the same group as `virtkit volume ...`, for hands used to Incus, and
`volume attach POOL VOLUME INSTANCE [PATH]` takes Incus's order (`--path` is the same as PATH).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_fields, print_json, print_table

if TYPE_CHECKING:
    from virtkit.api.remote_storage import RemoteStorage, RemoteVolumes, RemoteVolumeSnapshots
    from virtkit.model import VolumeAttachment, VolumeRecord, VolumeSnapshotRecord
    from virtkit.ops.storage import PoolView, Storage, VolumeView
    from virtkit.ops.volumes import Attached, Volumes
    from virtkit.ops.volumesnaps import VolumeSnapshots

# --limit-* options and the volume settings they set.
LIMIT_OPTIONS = {
    "limit_read_iops": "limits.read_iops", "limit_write_iops": "limits.write_iops",
    "limit_iops": "limits.iops", "limit_read_bps": "limits.read_bps", "limit_write_bps": "limits.write_bps",
    "limit_bps": "limits.bps",
}  # fmt: skip


def storage() -> Storage | RemoteStorage:
    """This host's storage verbs, or those of the remote in effect (api/remote_storage.py)."""
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_storage import RemoteStorage

        return RemoteStorage(ctx.client())
    from virtkit.ops.storage import Storage

    return Storage(ctx.root, ctx.store())


def volume_verbs() -> Volumes | RemoteVolumes:
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_storage import RemoteVolumes

        return RemoteVolumes(ctx.client())
    from virtkit.ops.volumes import Volumes

    return Volumes(ctx.root, ctx.store())


def volume_snapshots() -> VolumeSnapshots | RemoteVolumeSnapshots:
    ctx = get_context()
    if ctx.is_remote():
        from virtkit.api.remote_storage import RemoteVolumeSnapshots

        return RemoteVolumeSnapshots(ctx.client())
    from virtkit.ops.volumesnaps import VolumeSnapshots

    return VolumeSnapshots(ctx.root, ctx.store())


def _where(attachment: VolumeAttachment | None) -> str:
    """How an instance holds a volume: at a path inside (containers) or as a disk (VMs)."""
    if attachment is None:
        return ""
    return f" at {attachment.path}" if attachment.path else f" as disk {attachment.device}"


def _size(value: int | None) -> str:
    from virtkit.units import format_size

    return "-" if value is None else format_size(value)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _limit(key: str, value: str) -> str:
    return f"{value}iops" if key.endswith("iops") else f"{_size(int(value))}/s"


@click.group("storage")
def storage_group() -> None:
    """Storage pools (where volumes live) and their volumes."""


@storage_group.group("pool")
def pool_group() -> None:
    """Storage pools: directories holding volumes. `default` (under the state root) always exists."""


@pool_group.command("create")
@click.argument("name")
@click.option("--driver", default="dir", show_default=True, metavar="DRIVER", help="Pool driver: dir.")
@click.option(
    "--path", default=None, metavar="DIR",
    help="An empty or new directory (absolute) to hold the volumes; through a remote, a directory "
    "of the server's host.  [default: ROOT/pools/NAME]",
)  # fmt: skip
@json_option
def pool_create_command(name: str, driver: str, path: str | None) -> None:
    """Create storage pool NAME on directory DIR."""
    record = storage().create_pool(name, driver=driver, path=path)
    if get_context().json:
        print_json(record.model_dump(mode="json"))
        return
    click.echo(f"Pool {record.name} created: {record.driver} at {record.path}.")


def _pool_row(view: PoolView) -> tuple[str, ...]:
    r, cap = view.record, view.capacity
    state = "ok" if view.healthy else "unavailable"
    total, free = (cap.total, cap.free) if cap else (None, None)
    return (
        r.name,
        r.driver,
        r.path,
        str(len(view.volumes)),
        _size(view.allocated),
        _size(total),
        _size(free),
        state,
    )


@pool_group.command("list")
@json_option
def pool_list_command() -> None:
    """List pools: driver, path, volumes, space promised to them, filesystem size and free space."""
    views = storage().pool_views()
    if get_context().json:
        print_json([view.to_dict() for view in views])
        return
    columns = ["NAME", "DRIVER", "PATH", "VOLUMES", "ALLOCATED", "SIZE", "FREE", "STATE"]
    print_table(columns, [_pool_row(view) for view in views])


@pool_group.command("show")
@click.argument("name")
@json_option
def pool_show_command(name: str) -> None:
    """Show one pool: its path, driver, filesystem capacity and free space, and its volumes."""
    view = storage().pool_view(name)
    if get_context().json:
        print_json(view.to_dict())
        return
    r, cap = view.record, view.capacity
    state = "ok" if view.healthy else "unavailable: its directory or marker is missing (not mounted?)"
    fields = [
        ("Name", r.name), ("Driver", r.driver), ("Path", r.path), ("State", state),
        ("Size", _size(cap.total if cap else None)), ("Free", _size(cap.free if cap else None)),
        ("Allocated", f"{_size(view.allocated)} in {len(view.volumes)} volume(s) (thin: sparse until used)"),
    ]  # fmt: skip
    for volume in view.volumes:
        used = f", attached to {volume.attached_to}" if volume.attached_to else ""
        fields.append((f"Volume {volume.name}", f"{volume.type}, {_size(volume.size)}{used}"))
    print_fields(fields)


@pool_group.command("delete")
@click.argument("name")
def pool_delete_command(name: str) -> None:
    """Delete pool NAME (refused while it holds volumes). A directory virtkit did not make is kept."""
    kept = storage().delete_pool(name)
    for line in kept:
        click.echo(line)
    click.echo(f"Pool {name} deleted.")


@click.group("volume")
def volume_group() -> None:
    """Volumes: qcow2 disks for VMs (block) and directories for containers (filesystem)."""


storage_group.add_command(volume_group)


@volume_group.command("create")
@click.argument("pool")
@click.argument("name")
@click.option("--size", default="10GiB", show_default=True, metavar="SIZE", help="e.g. 10GiB, 512M, 1TB.")
@click.option(
    "--type", "kind", type=click.Choice(["block", "filesystem"]), default="block", show_default=True,
    help="block: a qcow2 disk for VMs; filesystem: a directory for containers.",
)  # fmt: skip
@click.option("--limit-read-iops", default=None, metavar="IOPS", help="Read operations per second.")
@click.option("--limit-write-iops", default=None, metavar="IOPS", help="Write operations per second.")
@click.option("--limit-iops", default=None, metavar="IOPS", help="Read+write operations per second.")
@click.option("--limit-read-bps", default=None, metavar="RATE", help="Read bytes per second, e.g. 50MiB.")
@click.option("--limit-write-bps", default=None, metavar="RATE", help="Write bytes per second.")
@click.option("--limit-bps", default=None, metavar="RATE", help="Read+write bytes per second.")
@json_option
def volume_create_command(pool: str, name: str, size: str, kind: str, **limits: str | None) -> None:
    """Create volume NAME in POOL. IO limits are applied when the volume is attached (block only)."""
    chosen = {LIMIT_OPTIONS[option]: value for option, value in limits.items() if value is not None}
    record = storage().create_volume(pool, name, size=size, type=kind, limits=chosen)
    if get_context().json:
        print_json(record.model_dump(mode="json"))
        return
    what = (
        f"{_size(record.size)} qcow2 disk" if record.format == "qcow2" else f"directory, {_size(record.size)}"
    )
    click.echo(f"Volume {record.name} created in pool {record.pool}: {record.type}, {what}.")


def _volume_row(record: VolumeRecord) -> tuple[str, ...]:
    from virtkit.storage.limits import limits_of

    shown = ", ".join(
        f"{key.removeprefix('limits.')}={_limit(key, value)}"
        for key, value in limits_of(record.config).items()
    )
    return (
        record.pool,
        record.name,
        str(record.type),
        _size(record.size),
        record.attached_to or "-",
        shown or "-",
    )


@volume_group.command("list")
@click.argument("pool", required=False)
@json_option
def volume_list_command(pool: str | None) -> None:
    """List volumes (of POOL, or of every pool)."""
    records = storage().volume_records(pool)
    if get_context().json:
        print_json([record.model_dump(mode="json") for record in records])
        return
    empty = "No volumes. Create one: virtkit volume create default data --size 10GiB"
    print_table(["POOL", "NAME", "TYPE", "SIZE", "ATTACHED TO", "LIMITS"], [_volume_row(r) for r in records],
                empty=empty)  # fmt: skip


def _volume_fields(view: VolumeView) -> list[tuple[str, str]]:
    from virtkit.storage.limits import limits_of

    r = view.record
    size = _size(r.size) + (
        " (virtual)" if r.format == "qcow2" else " (advisory: the dir driver sets no quota)"
    )
    fields = [
        ("Pool", r.pool), ("Name", r.name), ("Type", str(r.type)), ("Format", r.format), ("Size", size),
        ("Usage", _size(view.usage) if view.usage is not None else "missing: its file is gone"),
        ("Path", str(view.path)), ("Attached to", (r.attached_to or "-") + _where(view.attachment)),
        ("Created", _when(r.created_at)), ("Snapshots", str(view.snapshots)),
    ]  # fmt: skip
    for key, value in limits_of(r.config).items():
        fields.append((key, _limit(key, value)))
    return fields


@volume_group.command("show")
@click.argument("pool")
@click.argument("name")
@json_option
def volume_show_command(pool: str, name: str) -> None:
    """Show one volume: type, size, actual disk usage, path, attachment, IO limits."""
    view = storage().volume_view(pool, name)
    if get_context().json:
        print_json(view.to_dict())
        return
    print_fields(_volume_fields(view))


@volume_group.command("resize")
@click.argument("pool")
@click.argument("name")
@click.argument("size")
@click.option(
    "--force", is_flag=True, help="Allow shrinking a block volume (what lies past the new end is lost)."
)
def volume_resize_command(pool: str, name: str, size: str, force: bool) -> None:
    """Grow volume NAME of POOL to SIZE (shrinking a block volume needs --force)."""
    verbs = storage()
    before = verbs.volume(pool, name).size
    record = verbs.resize_volume(pool, name, size, force=force)
    if record.size == before:
        click.echo(f"Volume {record.name} is already {_size(record.size)}.")
        return
    click.echo(f"Volume {record.name} resized from {_size(before)} to {_size(record.size)}.")


@volume_group.command("set")
@click.argument("pool")
@click.argument("name")
@click.argument("settings", nargs=-1, metavar="KEY=VALUE...")
def volume_set_command(pool: str, name: str, settings: tuple[str, ...]) -> None:
    """Set IO limits, e.g. limits.read_iops=500 limits.write_bps=50MiB (applied at the next attach)."""
    from virtkit.storage.limits import parse_assignments

    values = parse_assignments(list(settings))
    record = storage().set_limits(pool, name, values)
    shown = ", ".join(f"{key}={_limit(key, record.config[key])}" for key in values)
    click.echo(f"Volume {record.name}: {shown}.")


@volume_group.command("unset")
@click.argument("pool")
@click.argument("name")
@click.argument("keys", nargs=-1, metavar="KEY...")
def volume_unset_command(pool: str, name: str, keys: tuple[str, ...]) -> None:
    """Remove IO limits of a volume, e.g. limits.read_iops."""
    record = storage().unset_limits(pool, name, list(keys))
    click.echo(f"Volume {record.name}: {', '.join(keys)} removed.")


@volume_group.command("delete")
@click.argument("pool")
@click.argument("name")
def volume_delete_command(pool: str, name: str) -> None:
    """Delete volume NAME of POOL and its data (refused while it is attached)."""
    storage().delete_volume(pool, name)
    click.echo(f"Volume {name} deleted from pool {pool}.")


def _attached_json(done: Attached) -> dict[str, object]:
    return {"instance": done.instance, "live": done.live, "notices": done.notices,
            **done.volume.model_dump(mode="json")}  # fmt: skip


@volume_group.command("attach")
@click.argument("pool")
@click.argument("name", metavar="VOLUME")
@click.argument("instance")
@click.argument("path", required=False)
@click.option(
    "--path", "path_option", default=None, metavar="PATH", help="Containers: where it is mounted inside."
)
@json_option
def volume_attach_command(
    pool: str, name: str, instance: str, path: str | None, path_option: str | None
) -> None:
    """Attach VOLUME of POOL to INSTANCE: a container mounts a filesystem volume at PATH (e.g.
    /mnt/data), at once if it runs; a stopped VM gets a block volume as a disk at its next start."""
    if path is not None and path_option is not None and path != path_option:
        from virtkit.errors import SpecError

        raise SpecError(f"two paths given: {path} and --path {path_option}", hint="give one")
    done = volume_verbs().attach(pool, name, instance, path if path is not None else path_option)
    if get_context().json:
        print_json(_attached_json(done))
        return
    when = "now" if done.live else "from its next start"
    click.echo(f"Volume {done.volume.name} of pool {done.volume.pool} attached to {done.instance}"
               f"{_where(done.volume)} ({when}).")  # fmt: skip
    for notice in done.notices:
        click.echo(f"Note: {notice}.", err=True)


@volume_group.command("detach")
@click.argument("pool")
@click.argument("name", metavar="VOLUME")
@click.argument("instance")
@json_option
def volume_detach_command(pool: str, name: str, instance: str) -> None:
    """Detach VOLUME of POOL from INSTANCE (at once if it runs); its data stays in the volume."""
    done = volume_verbs().detach(pool, name, instance)
    if get_context().json:
        print_json(_attached_json(done))
        return
    click.echo(f"Volume {done.volume.name} of pool {done.volume.pool} detached from {done.instance}.")
    for notice in done.notices:
        click.echo(f"Note: {notice}.", err=True)


@volume_group.group("snapshot")
def volume_snapshot_group() -> None:
    """Snapshots of a volume: a block volume's qcow2 internal snapshots, a copy of a filesystem
    volume's directory (kept beside it in its pool). Deleted with the volume."""


def _taken(record: VolumeSnapshotRecord) -> str:
    return "attached, running" if record.live else "not in use"


def _notes(notes: tuple[str, ...]) -> None:
    for note in notes:
        click.echo(f"Note: {note}.")


@volume_snapshot_group.command("create")
@click.argument("pool")
@click.argument("name", metavar="VOLUME")
@click.argument("snapshot", required=False)
@json_option
def volume_snapshot_create_command(pool: str, name: str, snapshot: str | None) -> None:
    """Snapshot VOLUME of POOL as SNAPSHOT (default: snap0, snap1, ...). A filesystem volume of a
    running container is copied with the container frozen; a running VM's block volume is refused."""
    record, notes = volume_snapshots().create(pool, name, snapshot)
    if get_context().json:
        print_json({**record.model_dump(mode="json"), "notes": list(notes)})
        return
    click.echo(f"Snapshot {record.name} of volume {record.volume} of pool {record.pool} created "
               f"({_size(record.size)}).")  # fmt: skip
    _notes(notes)


@volume_snapshot_group.command("list")
@click.argument("pool")
@click.argument("name", metavar="VOLUME")
@json_option
def volume_snapshot_list_command(pool: str, name: str) -> None:
    """List the snapshots of VOLUME of POOL, oldest first."""
    records = volume_snapshots().list(pool, name)
    if get_context().json:
        print_json([record.model_dump(mode="json") for record in records])
        return
    rows = [(r.name, _when(r.created_at), _size(r.size), _taken(r)) for r in records]
    empty = f"No snapshots of volume {name}. Take one: virtkit volume snapshot create {pool} {name}"
    print_table(["NAME", "TAKEN AT", "SIZE", "TAKEN WHILE"], rows, empty=empty)


@volume_snapshot_group.command("show")
@click.argument("pool")
@click.argument("name", metavar="VOLUME")
@click.argument("snapshot")
@json_option
def volume_snapshot_show_command(pool: str, name: str, snapshot: str) -> None:
    """Show SNAPSHOT of VOLUME of POOL: when it was taken, its size, and whether its volume was in use."""
    r = volume_snapshots().get(pool, name, snapshot)
    if get_context().json:
        print_json(r.model_dump(mode="json"))
        return
    print_fields([
        ("Pool", r.pool), ("Volume", r.volume), ("Name", r.name), ("Type", str(r.type)),
        ("Taken at", _when(r.created_at)), ("Size", _size(r.size)), ("Taken while", _taken(r)),
    ])  # fmt: skip


@volume_snapshot_group.command("restore")
@click.argument("pool")
@click.argument("name", metavar="VOLUME")
@click.argument("snapshot")
@json_option
def volume_snapshot_restore_command(pool: str, name: str, snapshot: str) -> None:
    """Put VOLUME of POOL back to SNAPSHOT: what it holds now is lost. Refused while it is attached
    to a running instance (stop it first)."""
    record, notes = volume_snapshots().restore(pool, name, snapshot)
    if get_context().json:
        print_json({**record.model_dump(mode="json"), "notes": list(notes)})
        return
    click.echo(f"Volume {record.volume} of pool {record.pool} restored to snapshot {record.name}.")
    _notes(notes)


@volume_snapshot_group.command("delete")
@click.argument("pool")
@click.argument("name", metavar="VOLUME")
@click.argument("snapshot")
def volume_snapshot_delete_command(pool: str, name: str, snapshot: str) -> None:
    """Delete SNAPSHOT of VOLUME of POOL."""
    record = volume_snapshots().delete(pool, name, snapshot)
    click.echo(f"Snapshot {record.name} of volume {record.volume} of pool {record.pool} deleted.")
