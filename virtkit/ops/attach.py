"""`virtkit network attach|detach NETWORK INSTANCE`: give an instance a NIC, or take one away.

The instance's saved runtime is made again with its new NICs (as `virtkit set` does), so its next
start has them. A running instance gets it at once where its kind allows: a container a veth (its
address set from the host), a q35 VM a hot-plugged PCIe NIC (QMP: drivers/qemu/hotplug.py);
microvm VMs cannot (the driver says so, and nothing changes). A refused or failed attach or detach
leaves the record, the runtime and the instance as they were.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from virtkit.drivers.base import Driver, InstancePaths, Runtime, get_driver
from virtkit.errors import NotFoundError, StateError, VirtkitError
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
            before = paths.runtime.read_bytes()  # put back as it was should the attach fail
            with self.networks.lock():
                (nic,) = self.life.nics.allocate(record, [request], allow_host=allow_host)
                new = self._commit(*self._regenerate(record, [*record.nics, nic]))
            try:
                self.networks.reload(nic.network)
                if live:
                    self._plug(new, driver, paths, nic)
            except _Kept:
                raise
            except BaseException:
                atomic_write(paths.runtime, before)
                self.store.put(record)
                self.networks.reload(nic.network)
                self.networks.refresh_firewall()
                raise
            log.info("%s: %s attached to %s as %s", record.name, nic.ip, nic.network, nic.inner)
            return nic

    def _plug(self, record: InstanceRecord, driver: Driver, paths: InstancePaths, nic: Nic) -> None:
        """`nic` into the running instance: its network up and its port's rules in place before its
        device exists, its rate limit right after. The driver leaves nothing when plugging fails;
        when the rate limit fails the NIC is unplugged again, or, should the instance not let it go,
        kept (and said: `_Kept`), so that the record tells what the instance has."""
        self.life.nics.before_start(record)  # its network up, its port's rules in place
        driver.plug_nic(record, paths, nic, addressing.bridge_of(nic.network))
        try:
            self.life.nics.ports_ready(record)
        except BaseException as exc:
            try:
                driver.unplug_nic(record, paths, nic)
            except VirtkitError as stuck:
                raise _Kept(
                    f"{nic.network} is attached to {record.name} as {nic.inner}, but without its rate "
                    f"limit ({exc}); taking it away again failed: {stuck.message}",
                    hint=f"detach it: virtkit network detach {nic.network} {record.name}",
                ) from exc
            raise

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
                # made before the NIC goes, so that nothing after its unplugging can fail but the writes
                kept = [nic for nic in record.nics if nic.network != network]
                new, runtime = self._regenerate(record, kept)
                if driver.status(record, paths).state in LIVE:
                    driver.unplug_nic(record, paths, gone[0])
                self._commit(new, runtime)
                self.networks.refresh_firewall()
            self.networks.reload(network)
            return gone[0]

    def _regenerate(self, record: InstanceRecord, nics: list[Nic]) -> tuple[InstanceRecord, Runtime]:
        """The record with `nics` and its runtime made again from it (as `virtkit set` does); no change."""
        from virtkit.ops.images import image_store

        new = record.model_copy(update={"nics": nics})
        new = InstanceRecord.model_validate(new.model_dump())
        images = image_store(self.life.root, self.store)
        image = images.resolve(new.image or "")
        paths = self.life.paths(new.name)
        return new, self.life.drivers(new.kind).generate(new, image, images.path(image), paths)

    def _commit(self, record: InstanceRecord, runtime: Runtime) -> InstanceRecord:
        """Save the runtime beside the instance, then the record: the next start uses both."""
        atomic_write(self.life.paths(record.name).runtime, json.dumps(runtime.to_dict(), indent=2))
        return self.store.put(record)


class _Kept(StateError):
    """A NIC left attached (and in the record) after a failure that could not be undone."""
