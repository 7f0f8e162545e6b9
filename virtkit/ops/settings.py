"""`virtkit set NAME KEY=VALUE...`: change an instance's share of the host, live where its kind allows.

Keys (as Incus users write them, dotted; an empty value goes back to the default)::

    cpus             vCPUs (a running VM: at its next start)
    memory           RAM; a running VM gives memory back through its balloon (not more than it
                     booted with)
    cpu.allowance    hard quota of host CPU time: 50%, 150%, 25ms/100ms
    disk.iops        root disk I/O operations per second
    disk.bandwidth   root disk bytes per second, e.g. 10MiB
    snapshots.schedule, snapshots.expiry, snapshots.pattern, snapshots.schedule.stopped
                     scheduled snapshots (ops/schedule.py); they change nothing the instance runs
                     with, so they take effect at once, whatever its state

Every value is checked (by regenerating the instance's runtime) before anything changes; then a
running instance is changed live (the driver refuses, changing nothing, what it cannot do live),
and the saved runtime and the record are written, so the next start runs with the new values too.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from virtkit.drivers.base import get_driver
from virtkit.errors import SpecError
from virtkit.model import InstanceRecord, InstanceState, parse_size, validate_name
from virtkit.ops.lifecycle import DriverFor
from virtkit.ops.resources import check_resources
from virtkit.ops.schedule import SETTINGS, SINCE, check_setting
from virtkit.store import Store, atomic_write

log = logging.getLogger(__name__)

# Setting -> the record.config key it is kept under (cpus and memory are record fields).
CONFIG_KEYS = {
    "cpu.allowance": "cpu_allowance",
    "disk.iops": "disk_iops",
    "disk.bandwidth": "disk_bandwidth",
    **SETTINGS,
}
RECORD_KEYS = ("cpus", "memory")
KEYS = (*RECORD_KEYS, *CONFIG_KEYS)
MAX_CPUS = 1024


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE words -> {key: value}; SpecError naming the word that is wrong."""
    if not items:
        raise SpecError("nothing to set", hint=f"give KEY=VALUE, with KEY one of {', '.join(KEYS)}")
    assignments: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise SpecError(f"invalid setting {item!r}: expected KEY=VALUE", hint="e.g. memory=512MiB")
        if key not in KEYS:
            raise SpecError(f"unknown setting {key!r}", hint=f"settable: {', '.join(KEYS)}")
        if key in assignments:
            raise SpecError(f"setting {key!r} given twice")
        assignments[key] = value.strip()
    return assignments


def changed_record(
    record: InstanceRecord, assignments: Mapping[str, str], now: Callable[[], float] = time.time
) -> InstanceRecord:
    """A copy of `record` with the assignments applied (sizes and counts checked). Setting
    snapshots.schedule notes when (`now`): the first scheduled snapshot is due after that."""
    new = record.model_copy(deep=True)
    for key, value in assignments.items():
        if key in SETTINGS:
            value = check_setting(key, value)
            if key == "snapshots.schedule":
                new.config.pop(SINCE, None)
                if value:
                    new.config[SINCE] = f"{now():.3f}"
        if key == "memory":
            if not value:
                raise SpecError("memory needs a value, e.g. memory=512MiB")
            new.memory = parse_size(value, what="memory size")
        elif key == "cpus":
            new.cpus = _cpus(value)
        elif value:
            new.config[CONFIG_KEYS[key]] = value
        else:
            new.config.pop(CONFIG_KEYS[key], None)
    check_resources(new.kind, new.cpus, new.memory)
    return new


def _cpus(value: str) -> float:
    try:
        cpus = float(value)
    except ValueError:
        raise SpecError(f"invalid CPU count {value!r}: expected a number") from None
    if not math.isfinite(cpus) or not 0 < cpus <= MAX_CPUS:
        raise SpecError(f"invalid CPU count {value!r}: expected more than 0 and at most {MAX_CPUS}")
    return cpus


class Settings:
    """`set` over one state root."""

    def __init__(self, root: Path, store: Store, drivers: DriverFor = get_driver) -> None:
        self.root = root
        self.store = store
        self.drivers = drivers

    def set(self, name: str, assignments: Mapping[str, str]) -> tuple[InstanceRecord, bool]:
        """Apply `assignments` to instance `name`; the new record, and whether it was changed live."""
        from virtkit.ops.images import image_store
        from virtkit.ops.lifecycle import Lifecycle

        record = self.store.get(InstanceRecord, validate_name(name))
        driver = self.drivers(record.kind)
        paths = Lifecycle(self.root, self.store, self.drivers).paths(record.name)
        with self.store.lock("instance", record.name):
            record = self.store.get(InstanceRecord, record.name)
            new = changed_record(record, assignments)
            if set(assignments) <= set(SETTINGS):  # nothing the instance runs with: at once, in any state
                log.info("%s: set %s", name, dict(assignments))
                return self.store.put(new), True
            images = image_store(self.root, self.store)
            image = images.resolve(new.image or "")
            runtime = driver.generate(new, image, images.path(image), paths)
            live = driver.status(record, paths).state in (InstanceState.RUNNING, InstanceState.PAUSED)
            if live:
                driver.update(new, runtime, paths)
            atomic_write(paths.runtime, json.dumps(runtime.to_dict(), indent=2))
            log.info("%s: set %s%s", name, dict(assignments), " (live)" if live else "")
            return self.store.put(new), live
