"""`virtkit operation list|show`: long-running operations and their progress."""

from __future__ import annotations

import time

import click

from virtkit.cli.context import get_context, json_option
from virtkit.cli.output import print_fields, print_json, print_table

STATUSES = ["pending", "running", "success", "failure", "cancelled"]


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


@click.group("operation")
def operation_group() -> None:
    """Long-running operations (launch, copy, migrate, ...) and their progress."""


@operation_group.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only operations in this status.")
@json_option
def list_command(status: str | None) -> None:
    """List operations, oldest first."""
    from virtkit.cli.lifecycle import operations
    from virtkit.model import OperationStatus

    ctx = get_context()
    records = operations().list(OperationStatus(status) if status else None)
    if ctx.json:
        print_json([record.model_dump(mode="json") for record in records])
        return
    rows = [
        (r.id, r.action, r.target or "-", r.status.value, f"{r.progress:.0f}%", _when(r.created_at))
        for r in records
    ]
    print_table(["ID", "ACTION", "TARGET", "STATUS", "PROGRESS", "CREATED"], rows, empty="No operations.")


@operation_group.command("show")
@click.argument("operation_id", metavar="ID")
@json_option
def show_command(operation_id: str) -> None:
    """Show one operation: status, progress, error and result."""
    from virtkit.cli.lifecycle import operations

    ctx = get_context()
    record = operations().get(operation_id)
    if ctx.json:
        print_json(record.model_dump(mode="json"))
        return
    fields = [
        ("ID", record.id),
        ("Action", record.action),
        ("Target", record.target or "-"),
        ("Status", record.status.value),
        ("Progress", f"{record.progress:.0f}%" + (f" ({record.message})" if record.message else "")),
        ("Created", _when(record.created_at)),
        ("Updated", _when(record.updated_at)),
    ]
    if record.error:
        fields.append(("Error", record.error))
    fields += [(f"Result {key}", str(value)) for key, value in sorted(record.result.items())]
    print_fields(fields)
