"""Sizes and names as users type them, parsed strictly.

Kept free of pydantic so light commands can use it; `virtkit.model` re-exports these.

Sizes follow what administrators already type to QEMU, Docker and Incus:
- a plain number is bytes: ``"1048576"``;
- binary units: ``K``, ``M``, ``G``, ``T``, ``P``, ``E`` alone (as ``qemu -m 2G`` and ``docker --memory 2g``)
  or with ``iB`` (``512MiB``, ``1.5GiB``), all powers of 1024;
- decimal units with ``B``: ``KB``, ``MB``, ``GB``, ``TB``, ``PB``, ``EB`` (as Incus), powers of 1000;
- ``B`` alone is bytes. Units are case-insensitive, one optional space before the unit.
Fractions are allowed when they come to a whole number of bytes. Everything else is refused.

Names become hostnames, file names and parts of interface names, so they follow the DNS label rules.
"""

from __future__ import annotations

import re

from virtkit.errors import SpecError

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4
PiB = 1024**5
EiB = 1024**6

# 1 EiB: more than any disk or memory a host can hold; beyond it a value is a typo.
MAX_SIZE = EiB

_BINARY = {"k": KiB, "m": MiB, "g": GiB, "t": TiB, "p": PiB, "e": EiB}
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15, "e": 10**18}
_SIZE_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?) ?(?P<unit>[kmgtpe]?(?:i?b)?)", re.ASCII | re.IGNORECASE)
_SIZE_EXAMPLES = "e.g. 512MiB, 2G, 1.5GiB, 10GB or a number of bytes"


def _multiplier(unit: str) -> int:
    unit = unit.lower()
    if unit in ("", "b"):
        return 1
    prefix, rest = unit[0], unit[1:]
    if rest in ("", "ib"):
        return _BINARY[prefix]
    if rest == "b":
        return _DECIMAL[prefix]
    raise ValueError(unit)


def parse_size(
    text: str | int,
    *,
    what: str = "size",
    minimum: int = 1,
    maximum: int = MAX_SIZE,
) -> int:
    """Parse a size as typed by a user into bytes.

    Raises SpecError naming `what` for garbage, negative numbers, values below `minimum`
    (1 by default: a zero size is meaningless for memory or disks; pass 0 where it is not),
    values above `maximum`, and fractions that do not come to whole bytes.
    """
    if isinstance(text, bool):
        raise SpecError(f"invalid {what} {text!r}: expected a size, {_SIZE_EXAMPLES}")
    if isinstance(text, int):
        value = text
        shown = str(text)
    else:
        shown = text
        if text.strip().startswith("-"):
            raise SpecError(f"invalid {what} {text!r}: sizes cannot be negative")
        match = _SIZE_RE.fullmatch(text.strip())
        if not match:
            raise SpecError(f"invalid {what} {text!r}: expected {_SIZE_EXAMPLES}")
        from decimal import Decimal, InvalidOperation  # here: `virtkit run` parses no size by default

        try:
            number = Decimal(match["num"])
            exact = number * _multiplier(match["unit"])
        except (InvalidOperation, ValueError, KeyError):
            raise SpecError(f"invalid {what} {text!r}: expected {_SIZE_EXAMPLES}") from None
        if exact != exact.to_integral_value():
            raise SpecError(f"invalid {what} {text!r}: it is not a whole number of bytes")
        value = int(exact)
    if value < 0:
        raise SpecError(f"invalid {what} {shown}: sizes cannot be negative")
    if value < minimum:
        raise SpecError(f"invalid {what} {shown}: must be at least {format_size(minimum)}")
    if value > maximum:
        raise SpecError(f"invalid {what} {shown}: must be at most {format_size(maximum)}")
    return value


def format_size(size: int) -> str:
    """Render bytes in the largest binary unit that fits, the way users type them: "512MiB",
    "1.5GiB", "1.25TiB" when exact to two decimals, else rounded to one ("9.3GiB")."""
    if size < 0:
        raise ValueError("negative size")
    from decimal import Decimal

    units = [("EiB", EiB), ("PiB", PiB), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)]
    for index, (name, factor) in enumerate(units):
        if size < factor:
            continue
        exact = Decimal(size) / factor
        if exact == exact.quantize(Decimal("0.01")):
            return f"{exact.normalize():f}{name}"
        rounded = exact.quantize(Decimal("0.1"))
        if rounded >= 1024 and index > 0:  # 1023.96MiB reads better as 1.0GiB than 1024.0MiB
            return f"1.0{units[index - 1][0]}"
        return f"{rounded}{name}"
    return f"{size}B"


_NAME_RE = re.compile(r"[a-z0-9-]{1,63}", re.ASCII)


def validate_name(name: str, *, what: str = "instance name") -> str:
    """Check that `name` is a valid DNS label (RFC 1123): 1-63 characters of lowercase letters,
    digits and hyphens, starting with a letter and not ending with a hyphen. Returns it unchanged."""
    rule = "1-63 lowercase letters, digits and hyphens, starting with a letter, not ending with '-'"
    if not isinstance(name, str) or not name:
        raise SpecError(f"invalid {what}: it is empty", hint=f"use {rule}")
    shown = repr(name) if len(name) <= 80 and name.isprintable() else _escaped(name[:80], len(name) > 80)
    if len(name) > 63:
        raise SpecError(f"invalid {what} {shown}: longer than 63 characters", hint=f"use {rule}")
    if not _NAME_RE.fullmatch(name):
        hint = f"use {rule}"
        if _NAME_RE.fullmatch(name.lower()):
            hint = f"names are lowercase; try {name.lower()!r}"
        raise SpecError(f"invalid {what} {shown}: it may only hold a-z, 0-9 and '-'", hint=hint)
    if not name[0].isalpha():
        raise SpecError(f"invalid {what} {shown}: it must start with a letter", hint=f"use {rule}")
    if name.endswith("-"):
        raise SpecError(f"invalid {what} {shown}: it must not end with '-'", hint=f"use {rule}")
    return name


def _escaped(text: str, cut: bool) -> str:
    """`text` quoted once with its unprintable characters escaped (and "..." when it was cut)."""
    return "'" + text.encode("unicode_escape").decode() + ("..." if cut else "") + "'"

