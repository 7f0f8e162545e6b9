"""What every front door of the CLI shares, without click: the default state root and how an error
reaches the user (the click commands and `virtkit run`'s lean path both use these)."""

from __future__ import annotations

import os
import sys

from virtkit.errors import VirtkitError

DEFAULT_ROOT = "/var/lib/virtkit"


def default_root() -> str:
    return os.environ.get("VIRTKIT_ROOT") or DEFAULT_ROOT


def report_error(error: VirtkitError) -> None:
    """An error as the user reads it: one line saying what, one saying what to do."""
    text = f"Error: {error.message}\n"
    if error.hint:
        text += f"Hint: {error.hint}\n"
    sys.stderr.write(text)
    sys.stderr.flush()
