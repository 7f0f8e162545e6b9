"""`virtkit monitor`: lifecycle events as they happen, here or on a remote, until Ctrl-C."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from virtkit.cli.context import get_context, json_option
from virtkit.ops.events import TYPES  # stdlib only: cheap to import with the command


@click.command("monitor")
@click.option("--type", "types", multiple=True, type=click.Choice(list(TYPES)),
              help="Only events of this type (repeatable).")
@click.option("--count", type=click.IntRange(1), default=None, metavar="N", help="Stop after N events.")
@json_option
def monitor_command(types: tuple[str, ...], count: int | None) -> None:
    """Print events as they happen (instances created, started, stopped, deleted; operations;
    errors), one a line: time, type, action, target, details. Ctrl-C stops.

    With --json, one JSON document a line.
    """
    from virtkit.cli.lifecycle import events

    ctx = get_context()
    stream = events(list(types) or None, ticks=True)
    seen, ready = 0, False
    try:
        for event in stream:
            if not ready:
                ready = True
                click.echo(f"Watching events on {ctx.remote_name()} (Ctrl-C to stop).", err=True)
            if not event:
                continue
            click.echo(json.dumps(event, separators=(",", ":"), default=str) if ctx.json else line(event))
            seen += 1
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()


def line(event: dict[str, Any]) -> str:
    """`2026-12-03 05:40:12.345 instance started c1 kind=container`."""
    moment = float(event.get("time") or 0)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment)) + f".{int(moment % 1 * 1000):03d}"
    details = event.get("details") or {}
    words = [f"{key}={_value(value)}" for key, value in details.items()] if isinstance(details, dict) else []
    fields = [when, *(str(event.get(key) or "-") for key in ("type", "action", "target"))]
    return " ".join(fields + words)


def _value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return json.dumps(text) if not text or any(c.isspace() for c in text) else text
