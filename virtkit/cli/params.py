"""Command-line parameter types that validate as they parse, before anything is opened or created.

They raise SpecError (not click's BadParameter) so the user sees virtkit's two-line error.
"""

from __future__ import annotations

from typing import Any

import click

from virtkit.units import parse_size, validate_name


class NameType(click.ParamType[str, Any]):
    """An object name (DNS label rules), e.g. an instance name."""

    name = "name"

    def __init__(self, what: str = "instance name") -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return validate_name(str(value), what=self.what)


class SizeType(click.ParamType[int, Any]):
    """A size such as 512MiB, 2G or a number of bytes, converted to bytes."""

    name = "size"

    def __init__(self, what: str = "size", minimum: int = 1) -> None:
        self.what = what
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        return parse_size(str(value), what=self.what, minimum=self.minimum)


INSTANCE_NAME = NameType()
