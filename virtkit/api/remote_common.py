"""What the remote adapters (api/remote_*.py) share: records rebuilt from the API's JSON, and
path segments quoted so that a name cannot reach another route."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from virtkit.errors import SpecError

M = TypeVar("M", bound=BaseModel)


def model_of(cls: type[M], document: Mapping[str, Any]) -> M:
    """`cls` rebuilt from a document holding its fields and perhaps more (a view's extra keys)."""
    return cls.model_validate({key: value for key, value in document.items() if key in cls.model_fields})


def seg(text: str) -> str:
    """One URL path segment: `text` quoted whole (a '/' or '..' stays inside the segment)."""
    quoted = quote(text, safe="")
    return quoted if quoted not in (".", "..") else quoted.replace(".", "%2E")


def refuse(what: str, why: str) -> NoReturn:
    """SpecError for what a command cannot do through a remote."""
    raise SpecError(f"{what} does not work through a remote: {why}",
                    hint="run it on the server's host, or with --remote local there")  # fmt: skip
