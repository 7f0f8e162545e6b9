"""virtkit: virtual machines and containers on Linux servers, made in seconds, kept apart, moved.

This package's top level stays light: `virtkit --version` imports nothing but this module and click.
The library's names (`from virtkit import Host`, see virtkit/library.py) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Host", "Instance", "__version__"]

if TYPE_CHECKING:
    from virtkit.library import Host, Instance


def __getattr__(name: str) -> Any:
    if name in ("Host", "Instance"):
        from virtkit import library

        return getattr(library, name)
    raise AttributeError(f"module 'virtkit' has no attribute {name!r}")
