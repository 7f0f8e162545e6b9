"""The disk throttle settings every kind of instance takes (`--disk-iops`, `--disk-bandwidth`)."""

from __future__ import annotations

from collections.abc import Mapping

from virtkit.errors import SpecError
from virtkit.units import parse_size


def disk_throttle(config: Mapping[str, str]) -> tuple[int | None, int | None]:
    """(I/O operations per second, bytes per second) from an instance's config; None is unlimited."""
    iops_text = config.get("disk_iops")
    bps_text = config.get("disk_bandwidth")
    iops = None
    if iops_text:
        if not iops_text.isdigit() or int(iops_text) < 1:
            raise SpecError(f"invalid disk IOPS {iops_text!r}: expected a whole number, 1 or more")
        iops = int(iops_text)
    bps = parse_size(bps_text, what="disk bandwidth") if bps_text else None
    return iops, bps
