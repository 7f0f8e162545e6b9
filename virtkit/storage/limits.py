"""Per-volume IO limits: the `limits.*` config keys of a volume, validated when set, applied at attach.

Six keys, in the words `qm set --iops_rd` and Incus's `limits.read` users know, split by unit so a
read limit can cap both operations and bytes at once (QEMU's throttling takes both together):

    limits.read_iops   limits.write_iops   limits.iops    operations per second (1000 or 1000iops)
    limits.read_bps    limits.write_bps    limits.bps     bytes per second (50MiB, 100MB/s, 1048576)

`limits.iops` / `limits.bps` cap reads and writes together; QEMU refuses a total together with a
read or write limit of the same unit, so that is refused here already, not at attach time.
Only block volumes take limits: a filesystem volume is a directory sharing its filesystem's block
device with everything else on it, so no per-volume limit could be enforced for it.
"""

from __future__ import annotations

from collections.abc import Mapping

from virtkit.errors import SpecError
from virtkit.units import parse_size

PREFIX = "limits."
IOPS_KEYS = ("limits.read_iops", "limits.write_iops", "limits.iops")
BPS_KEYS = ("limits.read_bps", "limits.write_bps", "limits.bps")
KEYS = IOPS_KEYS + BPS_KEYS

# QEMU's THROTTLE_VALUE_MAX: a larger value is refused by blockdev-add / block_set_io_throttle.
MAX_VALUE = 10**15

# The throttle-group `limits` property each key becomes (QAPI ThrottleLimits).
_QEMU_NAMES = {
    "limits.read_iops": "iops-read", "limits.write_iops": "iops-write", "limits.iops": "iops-total",
    "limits.read_bps": "bps-read", "limits.write_bps": "bps-write", "limits.bps": "bps-total",
}  # fmt: skip


def known_keys() -> str:
    return ", ".join(KEYS)


def parse_value(key: str, text: str) -> str:
    """The canonical stored value (a whole number as text) of limit `key` typed as `text`."""
    if key not in KEYS:
        raise SpecError(f"unknown volume setting {key!r}", hint=f"volume settings are {known_keys()}")
    shown = text.strip()
    if key in IOPS_KEYS:
        digits = shown.lower().removesuffix("iops").strip()
        if not digits.isascii() or not digits.isdigit():
            raise SpecError(f"invalid {key} {text!r}: expected operations per second, e.g. 500 or 500iops")
        value = int(digits)
    else:
        value = parse_size(shown.removesuffix("/s"), what=key, minimum=0, maximum=MAX_VALUE)
    if value < 1:
        raise SpecError(
            f"invalid {key} {text!r}: a limit must be at least 1",
            hint=f"to remove the limit: virtkit volume unset POOL NAME {key}",
        )
    if value > MAX_VALUE:
        raise SpecError(f"invalid {key} {text!r}: QEMU takes at most {MAX_VALUE}")
    return str(value)


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE words (as `volume set` takes them) parsed into canonical values."""
    if not pairs:
        raise SpecError("nothing to set", hint=f"give KEY=VALUE, with KEY one of {known_keys()}")
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"invalid setting {pair!r}: expected KEY=VALUE", hint=f"keys: {known_keys()}")
        if key in values:
            raise SpecError(f"{key} is given twice")
        values[key] = parse_value(key, text)
    return values


def check(config: Mapping[str, str]) -> None:
    """Refuse limit combinations QEMU would refuse when the volume is attached."""
    for keys, unit in ((IOPS_KEYS, "iops"), (BPS_KEYS, "bps")):
        total = f"limits.{unit}"
        split = [key for key in keys[:2] if key in config]
        if total in config and split:
            raise SpecError(
                f"{total} (reads and writes together) cannot be combined with {' and '.join(split)}",
                hint=f"set either {total} or the read/write limits, not both",
            )
    for key, value in config.items():
        if key.startswith(PREFIX):
            parse_value(key, value)


def throttle_limits(config: Mapping[str, str]) -> dict[str, int]:
    """The limits of a volume as a QEMU throttle-group's `limits` (empty: unthrottled)."""
    return {_QEMU_NAMES[key]: int(config[key]) for key in KEYS if key in config}


def limits_of(config: Mapping[str, str]) -> dict[str, str]:
    """Only the `limits.*` entries of a volume's config."""
    return {key: value for key, value in config.items() if key.startswith(PREFIX)}
