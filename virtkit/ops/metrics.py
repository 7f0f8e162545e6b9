"""What `GET /metrics` reports: every instance's state and counters, and the host's totals.

For each instance: its live state (the driver's, as `virtkit list` shows it); while it runs or is
paused, its driver's counters (`Driver.stats`: CPU seconds, memory in use, disk bytes) and, for
each NIC, the bytes through its host-side device. The host side of a tap or veth sees the
instance's traffic mirrored: what the device transmits the instance receives. They are read from
/proc/net/dev, which shows the reader's own network namespace (the kernel's same counters as
/sys/class/net/DEV/statistics, but sysfs shows the namespace of whoever mounted it: a virtkit
running in a namespace of its own, as the multi-host tests do, would find its devices missing).

A counter the host does not give is left out, never guessed; an instance whose driver fails to
answer keeps its state and loses its counters for this collection (logged).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.drivers.base import Stats, get_driver
from virtkit.errors import VirtkitError
from virtkit.logs import get_logger
from virtkit.model import InstanceState
from virtkit.ops.lifecycle import DriverFor, Lifecycle
from virtkit.ops.resources import host_memory
from virtkit.store import Store

log = get_logger(__name__)

NET_DEV = Path("/proc/net/dev")
LIVE = (InstanceState.RUNNING, InstanceState.PAUSED)


@dataclass(frozen=True)
class NicCounters:
    """Bytes through one NIC, as the instance sees them; None where the device does not say."""

    device: str
    received: int | None = None
    transmitted: int | None = None


@dataclass(frozen=True)
class InstanceMetrics:
    name: str
    kind: str
    state: InstanceState
    stats: Stats = field(default_factory=Stats)
    nics: tuple[NicCounters, ...] = ()


@dataclass(frozen=True)
class HostMetrics:
    cpus: int
    memory_total: int
    memory_available: int | None
    instances: dict[InstanceState, int]  # every state, 0 for those no instance is in


@dataclass(frozen=True)
class Metrics:
    host: HostMetrics
    instances: tuple[InstanceMetrics, ...]
    seconds: float  # how long collecting took


def read_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """Device -> (received, transmitted) bytes, as the host counts them, from /proc/net/dev."""
    found: dict[str, tuple[int, int]] = {}
    for line in text.splitlines()[2:]:
        device, colon, counters = line.partition(":")
        fields = counters.split()
        if colon and len(fields) >= 9 and fields[0].isdigit() and fields[8].isdigit():
            found[device.strip()] = (int(fields[0]), int(fields[8]))
    return found


def nic_counters(device: str, host: dict[str, tuple[int, int]]) -> NicCounters:
    """The instance-side bytes of the NIC whose host-side device is `device` (`host`: read_net_dev's)."""
    if device not in host:
        return NicCounters(device)
    host_rx, host_tx = host[device]
    return NicCounters(device, received=host_tx, transmitted=host_rx)


def collect(root: Path, store: Store, drivers: DriverFor = get_driver, net_dev: Path = NET_DEV) -> Metrics:
    """Every instance's state and counters, and the host's totals, now."""
    began = time.monotonic()
    life = Lifecycle(root, store, drivers)
    instances = []
    host_nics: dict[str, tuple[int, int]] | None = None
    for view in life.views():
        record, state = view.record, view.status.state
        stats = Stats()
        nics: tuple[NicCounters, ...] = ()
        if state in LIVE:
            try:
                stats = drivers(record.kind).stats(record, life.paths(record.name))
            except (VirtkitError, OSError) as exc:  # one instance's counters, not the whole page
                log.warning("no counters for %s: %s", record.name, exc)
            if record.nics and host_nics is None:
                host_nics = read_net_dev(_read(net_dev))
            nics = tuple(nic_counters(nic.device, host_nics or {}) for nic in record.nics)
        instances.append(InstanceMetrics(record.name, record.kind.value, state, stats, nics))
    by_state = Counter(instance.state for instance in instances)
    host = HostMetrics(
        cpus=os.cpu_count() or 1,
        memory_total=host_memory(),
        memory_available=_available(),
        instances={state: by_state.get(state, 0) for state in InstanceState},
    )
    return Metrics(host, tuple(instances), time.monotonic() - began)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc.strerror)
        return ""


def _available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
