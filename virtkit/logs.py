"""Loggers that import `logging` only when something is logged.

Importing logging (with traceback, threading, string, ...) costs about as much as a whole `runc
run` on a busy host, and `virtkit run --rm` is timed against that (benchmarks/container_run.py).
The modules on its path take their logger from `get_logger(__name__)` instead of
`logging.getLogger(__name__)`: same names, same configuration, the real logger fetched on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging


class _LazyLogger:
    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: logging.Logger | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self._name)
        return getattr(self._logger, attribute)


def get_logger(name: str) -> logging.Logger:
    """The logger `name`, as logging.getLogger(name) would give it, once it is first used."""
    lazy: Any = _LazyLogger(name)
    return lazy  # type: ignore[no-any-return]
