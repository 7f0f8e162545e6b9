"""Rendering for the terminal: JSON documents, tables and key/value blocks.

rich is imported only when a table is drawn, so commands that print one line stay fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click


def print_json(document: Any) -> None:
    """Print a stable, indented JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, sort_keys=False, default=str))


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str = "") -> None:
    """A plain table with a header row; `empty` is said instead when there are no rows."""
    if not rows and empty:
        click.echo(empty)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(file=sys.stdout, soft_wrap=True, highlight=False).print(table)


def print_fields(fields: Sequence[tuple[str, str]]) -> None:
    """A `key: value` block, keys aligned."""
    width = max((len(key) for key, _ in fields), default=0)
    for key, value in fields:
        click.echo(f"{key + ':':<{width + 1}} {value}")
