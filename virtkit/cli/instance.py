"""`virtkit list` and `virtkit show NAME`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_fields, print_json, print_table
from virtkit.cli.params import INSTANCE_NAME
from virtkit.units import format_size

if TYPE_CHECKING:
    from virtkit.model import InstanceRecord


def _age(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _row(r: InstanceRecord) -> tuple[str, ...]:
    memory = format_size(r.memory)
    return (r.name, r.kind.value, r.state.value, f"{r.cpus:g}", memory, r.image or "-", _age(r.created_at))


@click.command("list")
@json_option
def list_command() -> None:
    """List instances: name, type, state, CPUs, memory, image."""
    from virtkit.ops.instances import list_instances

    ctx = get_context()
    records = list_instances(ctx.store())
    if ctx.json:
        print_json([record.model_dump(mode="json") for record in records])
        return
    rows = [_row(record) for record in records]
    print_table(
        ["NAME", "TYPE", "STATE", "CPUS", "MEMORY", "IMAGE", "AGE"],
        rows,
        empty="No instances.",
    )


@click.command("show")
@click.argument("name", type=INSTANCE_NAME)
@json_option
def show_command(name: str) -> None:
    """Show one instance's settings and state."""
    from virtkit.ops.instances import get_instance

    ctx = get_context()
    record = get_instance(ctx.store(), name)
    if ctx.json:
        print_json(record.model_dump(mode="json"))
        return
    fields = [
        ("Name", record.name),
        ("UUID", record.uuid),
        ("Type", record.kind.value),
        ("State", record.state.value),
        ("Architecture", record.arch),
        ("CPUs", f"{record.cpus:g}"),
        ("Memory", format_size(record.memory)),
        ("Image", record.image or "-"),
        ("Created", time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(record.created_at))),
    ]
    fields += [(f"Label {key}", value) for key, value in sorted(record.labels.items())]
    print_fields(fields)
