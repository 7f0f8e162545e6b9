"""`virtkit list` and `virtkit show NAME [--runtime]`: instances with their live state."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from virtkit.cli.context import INSTANCE, get_context, json_option
from virtkit.cli.output import print_fields, print_json, print_table
from virtkit.units import format_size

if TYPE_CHECKING:
    from virtkit.ops.lifecycle import InstanceView


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _row(view: InstanceView) -> tuple[str, ...]:
    r = view.record
    state = view.status.state.value
    memory = format_size(r.memory)
    image = (r.image or "-")[:12]
    ipv4 = " ".join(f"{nic.ip or '-'} ({nic.inner})" for nic in r.nics) or "-"
    age = _duration(time.time() - r.created_at)
    return (r.name, r.kind.value, state, ipv4, f"{r.cpus:g}", memory, image, age)


@click.command("list")
@click.argument("where", metavar="[REMOTE:]", required=False, default=None)
@json_option
def list_command(where: str | None) -> None:
    """List instances: name, type, live state, IPv4 addresses, CPUs, memory, image, age.

    `virtkit list web:` lists those of remote web (as --remote web does)."""
    from virtkit.cli.lifecycle import lifecycle

    ctx = get_context()
    if where is not None:
        from virtkit.api.remotes import split_target
        from virtkit.errors import SpecError

        remote, rest = split_target(where)
        if remote is None or rest:
            raise SpecError(f"invalid list argument {where[:80]!r}: expected REMOTE:",
                            hint="e.g. virtkit list web:")  # fmt: skip
        ctx.address(remote)
    views = lifecycle().views()
    running: list[dict[str, Any]] = []
    if not ctx.is_remote():
        from virtkit.ops import oneshots

        running = oneshots.live(ctx.root)  # `virtkit run --rm` containers: unregistered, shown while they run
    if ctx.json:
        print_json([view.to_dict() for view in views] + [_oneshot(one) for one in running])
        return
    rows = [_row(view) for view in views]
    for one in running:
        age = _duration(time.time() - float(one["created_at"]))
        rows.append((one["name"], "container", "running (run --rm)", "-", f"{one['cpus']:g}",
                     format_size(int(one["memory"])), str(one["image"])[:12], age))  # fmt: skip
    columns = ["NAME", "TYPE", "STATE", "IPV4", "CPUS", "MEMORY", "IMAGE", "AGE"]
    print_table(columns, rows, empty="No instances.")


def _oneshot(one: dict[str, object]) -> dict[str, object]:
    keys = ("name", "image", "cpus", "memory", "pid")
    return {**{key: one[key] for key in keys}, "kind": "container", "state": "running", "oneshot": True,
            "container_id": one["cid"]}  # fmt: skip


@click.command("show")
@click.argument("name", type=INSTANCE)
@click.option("--runtime", is_flag=True, help="Print the saved runtime (the exact QEMU command line).")
@json_option
def show_command(name: str, runtime: bool) -> None:
    """Show one instance: live state, process, resources, boot phases."""
    from virtkit.cli.lifecycle import lifecycle

    ctx = get_context()
    life = lifecycle()
    if runtime:
        saved = life.runtime(name)
        if ctx.json:
            print_json(saved.to_dict())
        else:
            click.echo(command_line(saved.argv) if saved.argv else str(saved.config))
        return
    view = life.view(name)
    if ctx.json:
        print_json(view.to_dict())
        return
    print_fields(_fields(view))


def command_line(argv: list[str]) -> str:
    """argv as a shell-pasteable command, one option and its value per line."""
    import shlex

    lines: list[str] = []
    for token in argv:
        if lines and not token.startswith("-") and lines[-1].startswith("-") and " " not in lines[-1]:
            lines[-1] += " " + shlex.quote(token)
        else:
            lines.append(shlex.quote(token))
    return " \\\n  ".join(lines)


# Shown from the record already (Boot, Uptime), so not again from the driver's live details.
_SHOWN = {"phases", "started_at"}


def _detail(key: str, value: object) -> str:
    """A live detail as people read it: sizes in binary units, CPU time in seconds, limits in words."""
    if value is None:
        return "-"
    if key in ("memory_ceiling", "memory_used") and isinstance(value, int):
        return format_size(value)
    if key == "cpu_seconds" and isinstance(value, float):
        return f"{value:.1f}s"
    if key == "disks" and isinstance(value, list):
        return "; ".join(_disk(disk) for disk in value) or "-"
    if key == "disk_limits" and isinstance(value, list):
        return "; ".join(_disk_limit(limit) for limit in value) or "-"
    return str(value)


def _disk(disk: dict[str, object]) -> str:
    readonly = ", read-only" if disk.get("readonly") else ""
    return f"{disk['path']} ({disk['format']} on {disk['bus']}{readonly})"


def _disk_limit(limit: dict[str, int | None]) -> str:
    iops, bps = limit.get("iops"), limit.get("bps")
    words = ([f"{iops} IOPS"] if iops else []) + ([f"{format_size(bps)}/s"] if bps else [])
    return ", ".join(words) or "unlimited"


def _fields(view: InstanceView) -> list[tuple[str, str]]:
    record, status = view.record, view.status
    state = status.state.value + (f" ({status.reason})" if status.reason else "")
    fields = [
        ("Name", record.name),
        ("UUID", record.uuid),
        ("Type", record.kind.value),
        ("State", state),
        ("PID", str(status.pid) if status.pid else "-"),
        ("Architecture", record.arch),
        ("CPUs", f"{record.cpus:g}"),
        ("Memory", format_size(record.memory)),
        ("Image", record.image or "-"),
        ("Created", time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(record.created_at))),
    ]
    if status.pid and record.started_at:
        fields.append(("Uptime", _duration(time.time() - record.started_at)))
    if record.boot:
        fields.append(
            ("Boot", ", ".join(f"{phase} {seconds:.2f}s" for phase, seconds in record.boot.items()))
        )
    fields += [
        (key.replace("_", " ").capitalize(), _detail(key, value))
        for key, value in sorted(status.details.items())
        if key not in _SHOWN
    ]
    if record.nics:
        from virtkit.network.shaping import format_rate
    for nic in record.nics:
        limit = f", limit {format_rate(nic.limit)}" if nic.limit else ""
        host = ", may reach the host" if nic.allow_host else ""
        model = f", model {nic.model}" if nic.model else ""
        ip = nic.ip or "(from its LAN)"
        fields.append((f"NIC {nic.inner}", f"{ip} on {nic.network}, MAC {nic.mac}{model}, host device "
                       f"{nic.device}{limit}{host}"))  # fmt: skip
    for v in record.volumes:
        where = f"at {v.path}" if v.path else f"as disk {v.device}"
        fields.append((f"Volume {v.pool}/{v.name}", f"{v.type} volume {where}"))
    shown = {k: v for k, v in record.config.items() if k != "snapshots_schedule_since"}  # bookkeeping
    fields += [(f"Config {key}", value) for key, value in sorted(shown.items())]
    fields += [(f"Label {key}", value) for key, value in sorted(record.labels.items())]
    return fields
