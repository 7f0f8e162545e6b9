"""Read-only look-ups for the lean paths (`virtkit run --rm`), straight from the state database.

The store proper (sqlite.py) validates every record with its pydantic model, and importing pydantic
alone costs more than a whole `runc run`. What these functions return is the stored JSON as it is,
unvalidated: enough to find an image's files. None means "not found, or cannot tell here" — the
caller then takes the full way (open_store and the record models), which says exactly why.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

DB_NAME = "virtkit.db"  # as store.root.DB_NAME
BUSY_TIMEOUT = 10.0
_HEX = frozenset("0123456789abcdef")


def _query(root: Path, sql: str, args: tuple[str | int, ...]) -> list[tuple[Any, ...]] | None:
    db = root / DB_NAME
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def image(root: Path, ref: str) -> dict[str, Any] | None:
    """The stored image whose alias is `ref` (or whose fingerprint starts with it, if only one does)."""
    rows = _query(root, "SELECT data FROM images WHERE EXISTS "
                  "(SELECT 1 FROM json_each(images.data, '$.aliases') WHERE value = ?)", (ref,))  # fmt: skip
    if not rows and len(ref) >= 4 and set(ref) <= _HEX:
        sql = "SELECT data FROM images WHERE substr(fingerprint, 1, ?) = ?"
        rows = _query(root, sql, (len(ref), ref))
    if not rows or len(rows) != 1:
        return None
    try:
        data = json.loads(rows[0][0])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def instance_exists(root: Path, name: str) -> bool | None:
    """Whether an instance record named `name` exists (None: cannot tell)."""
    rows = _query(root, "SELECT 1 FROM instances WHERE name = ?", (name,))
    if rows is None:
        return None if (root / DB_NAME).exists() else False
    return bool(rows)
