"""`virtkit network attach|detach NETWORK INSTANCE`: give a defined instance a NIC, or take one away.

The instance's saved runtime is made again with its new NICs (as `virtkit set` does), so its next
start has them. A running instance is refused for now: hot-plugging (QMP netdev_add/device_add on
a q35 VM, a veth into a running container) is not done yet.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from virtkit.drivers.base import get_driver
from virtkit.errors import NotFoundError, StateError
from virtkit.model import InstanceRecord, InstanceState, Nic, validate_name
from virtkit.network import addressing
from virtkit.ops.lifecycle import DriverFor, Lifecycle
from virtkit.ops.nics import NicRequest
from virtkit.store import Store, atomic_write

log = logging.getLogger(__name__)


class Attach:
    def __init__(self, root: Path, store: Store, drivers: DriverFor = get_driver) -> None:
        self.life = Lifecycle(root, store, drivers)
        self.store = store

    def attach(self, request: NicRequest, instance: str, *, allow_host: bool = False) -> Nic:
        record = self.store.get(InstanceRecord, validate_name(instance))
        with self.store.lock("instance", record.name):
            record = self._stopped(record.name, "attach a NIC to")
            networks = self.life.nics.networks
            with networks.lock():
                (nic,) = self.life.nics.allocate(record, [request], allow_host=allow_host)
                self._save(record, [*record.nics, nic])
            networks.reload(nic.network)
            log.info("%s: %s attached to %s as %s", record.name, nic.ip, nic.network, nic.inner)
            return nic

    def detach(self, network: str, instance: str) -> Nic:
        network = addressing.network_name(network)
        record = self.store.get(InstanceRecord, validate_name(instance))
        with self.store.lock("instance", record.name):
            record = self._stopped(record.name, "detach a NIC from")
            gone = [nic for nic in record.nics if nic.network == network]
            if not gone:
                raise NotFoundError(f"instance {record.name!r} has no NIC on network {network!r}")
            networks = self.life.nics.networks
            with networks.lock():
                held = networks.get(network)
                if any(f.instance == record.name for f in held.forwards):
                    raise StateError(
                        f"network {network!r} forwards ports to {record.name}",
                        hint=f"remove them first: virtkit network forward list {network}",
                    )
                self._save(record, [nic for nic in record.nics if nic.network != network])
            networks.reload(network)
            return gone[0]

    def _stopped(self, name: str, verb: str) -> InstanceRecord:
        record = self.store.get(InstanceRecord, name)
        driver = self.life.drivers(record.kind)
        state = driver.status(record, self.life.paths(name)).state
        if state not in (InstanceState.STOPPED, InstanceState.ERROR):
            raise StateError(
                f"instance {name!r} is {state.value}: virtkit cannot {verb} a running instance yet",
                hint=f"stop it first: virtkit stop {name}",
            )
        return record

    def _save(self, record: InstanceRecord, nics: list[Nic]) -> None:
        """The record with `nics`, and its runtime made again from it; neither changes on failure."""
        from virtkit.ops.images import image_store

        new = record.model_copy(update={"nics": nics})
        new = InstanceRecord.model_validate(new.model_dump())
        images = image_store(self.life.root, self.store)
        image = images.resolve(new.image or "")
        paths = self.life.paths(new.name)
        runtime = self.life.drivers(new.kind).generate(new, image, images.path(image), paths)
        atomic_write(paths.runtime, json.dumps(runtime.to_dict(), indent=2))
        self.store.put(new)
