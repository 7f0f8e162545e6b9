"""`virtkit network attach|detach NETWORK INSTANCE`: give an instance a NIC, or take one away.

The instance's saved runtime is made again with its new NICs (as `virtkit set` does), so its next
start has them. A running instance gets it at once where its kind allows: a container a veth (its
address set from the host), a q35 VM a hot-plugged PCIe NIC (QMP); microvm VMs cannot.
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

LIVE = (InstanceState.RUNNING, InstanceState.PAUSED)


class Attach:
    def __init__(self, root: Path, store: Store, drivers: DriverFor = get_driver) -> None:
        self.life = Lifecycle(root, store, drivers)
        self.store = store
        self.networks = self.life.nics.networks

    def attach(self, request: NicRequest, instance: str, *, allow_host: bool = False) -> Nic:
        record = self.store.get(InstanceRecord, validate_name(instance))
        with self.store.lock("instance", record.name):
            record = self.store.get(InstanceRecord, record.name)
            driver, paths = self.life.drivers(record.kind), self.life.paths(record.name)
            live = driver.status(record, paths).state in LIVE
            with self.networks.lock():
                (nic,) = self.life.nics.allocate(record, [request], allow_host=allow_host)
                new = self._save(record, [*record.nics, nic])
            try:
                self.networks.reload(nic.network)
                if live:
                    self.life.nics.before_start(new)  # its network up, its port's rules in place
                    driver.plug_nic(new, paths, nic, addressing.bridge_of(nic.network))
                    self.life.nics.ports_ready(new)
            except BaseException:
                if live:
                    driver.unplug_nic(new, paths, nic)
                self._save(new, record.nics)
                self.networks.reload(nic.network)
                self.networks.refresh_firewall()
                raise
            log.info("%s: %s attached to %s as %s", record.name, nic.ip, nic.network, nic.inner)
            return nic

    def detach(self, network: str, instance: str) -> Nic:
        network = addressing.network_name(network)
        record = self.store.get(InstanceRecord, validate_name(instance))
        with self.store.lock("instance", record.name):
            record = self.store.get(InstanceRecord, record.name)
            gone = [nic for nic in record.nics if nic.network == network]
            if not gone:
                raise NotFoundError(f"instance {record.name!r} has no NIC on network {network!r}")
            driver, paths = self.life.drivers(record.kind), self.life.paths(record.name)
            with self.networks.lock():
                held = self.networks.get(network)
                if any(f.instance == record.name for f in held.forwards):
                    raise StateError(
                        f"network {network!r} forwards ports to {record.name}",
                        hint=f"remove them first: virtkit network forward list {network}",
                    )
                if driver.status(record, paths).state in LIVE:
                    driver.unplug_nic(record, paths, gone[0])
                self._save(record, [nic for nic in record.nics if nic.network != network])
                self.networks.refresh_firewall()
            self.networks.reload(network)
            return gone[0]

    def _save(self, record: InstanceRecord, nics: list[Nic]) -> InstanceRecord:
        """The record with `nics`, and its runtime made again from it; neither changes on failure."""
        from virtkit.ops.images import image_store

        new = record.model_copy(update={"nics": nics})
        new = InstanceRecord.model_validate(new.model_dump())
        images = image_store(self.life.root, self.store)
        image = images.resolve(new.image or "")
        paths = self.life.paths(new.name)
        runtime = self.life.drivers(new.kind).generate(new, image, images.path(image), paths)
        atomic_write(paths.runtime, json.dumps(runtime.to_dict(), indent=2))
        return self.store.put(new)
