"""The destination's side of a live move (`virtkit move NAME --to REMOTE --live`; the source's side
is ops/movelive.py, the protocol is in docs/migration.md).

`prepare` defines the VM here as the source describes it (same name, UUID, MACs and addresses,
on networks of the same names unless mapped), makes its disks on this host's copy of its image,
and starts its QEMU paused and waiting: disks exported over NBD, the migration stream accepted.
A file INCOMING in the instance's directory marks it as not yet this host's: `finish` (the source
has switched over) runs the guest here and removes the mark; `abort` deletes a marked instance and
nothing else. `discard_leftovers` (at server start) aborts every marked one: their source went on.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from virtkit.drivers.base import InstancePaths, Runtime, get_driver
from virtkit.drivers.qemu import migration
from virtkit.drivers.qemu.monitor import Monitor
from virtkit.drivers.qemu.spec import VmSpec
from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError, VirtkitError
from virtkit.model import MAC_PATTERN, ImageRecord, InstanceKind, InstanceRecord, InstanceState, Name
from virtkit.ops import events
from virtkit.ops.lifecycle import Lifecycle
from virtkit.ops.nics import NicRequest
from virtkit.ops.resources import check_resources
from virtkit.store import Store, atomic_write

log = logging.getLogger(__name__)

INCOMING = "incoming.json"


class OfferNic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    network: Name
    mac: str = Field(pattern=MAC_PATTERN)
    ip: str | None = None
    model: str | None = Field(default=None, pattern=r"^(virtio|e1000)$")
    limit: int | None = Field(default=None, gt=0)
    allow_host: bool = False


class Offer(BaseModel):
    """What the source says of the VM it is about to send (POST /1.0/migrations)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    uuid: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    image: str = Field(pattern=r"^[0-9a-f]{64}$")
    arch: str = Field(default="x86_64", pattern=r"^[a-z0-9_]{1,16}$")
    cpus: float = Field(gt=0, le=1024)
    memory: int = Field(gt=0)
    config: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    nics: list[OfferNic] = Field(default_factory=list, max_length=16)
    disks: list[str] = Field(default_factory=list, max_length=16)  # the source's writable block nodes
    postcopy: bool = False


@dataclass(frozen=True)
class Prepared:
    name: str
    host: str
    nbd_port: int
    migrate_port: int
    exports: dict[str, str] = field(default_factory=dict)  # block node -> NBD export name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "nbd_port": self.nbd_port,
                "migrate_port": self.migrate_port, "exports": self.exports}  # fmt: skip


class Incoming:
    """Live moves arriving at the state root `root`."""

    def __init__(self, root: Path, store: Store) -> None:
        self.root, self.store = root, store
        self.lifecycle = Lifecycle(root, store)
        self.driver = get_driver(InstanceKind.VM)

    def prepare(self, offer: Offer, host: str) -> Prepared:
        """The VM defined here and its QEMU waiting on `host` (this server's address the source used)."""
        record, image = self._check(offer)
        paths = InstancePaths.of(self.root, record.name)
        with self.store.lock("instance", record.name):
            record = self._store(record, offer)
            try:
                runtime = self._define(record, image, paths)
                exports = self._exports(runtime, offer)
                ports = _free_ports(host, 2)
                self.lifecycle.nics.before_start(record)
                incoming = Runtime(kind=runtime.kind, argv=[*runtime.argv, *migration.INCOMING_ARGS],
                                   config=runtime.config, notices=runtime.notices)  # fmt: skip
                self.driver.start(record, incoming, paths,
                                  plugged=lambda: self.lifecycle.nics.ports_ready(record))  # fmt: skip
                migration.listen(self._monitor(record, paths), host, ports[0], ports[1],
                                 [migration.Export(node, name) for node, name in exports.items()],
                                 postcopy=offer.postcopy)  # fmt: skip
            except BaseException:
                self._remove(record, paths)
                raise
        events.emit(self.root, "instance", "incoming", record.name)
        return Prepared(record.name, host, ports[0], ports[1], exports)

    def _check(self, offer: Offer) -> tuple[InstanceRecord, ImageRecord]:
        if self.store.find(InstanceRecord, offer.name) is not None:
            raise ConflictError(f"an instance named {offer.name!r} exists on this host already")
        if any(r.uuid == offer.uuid for r in self.store.list(InstanceRecord)):
            raise ConflictError(f"an instance with UUID {offer.uuid} exists on this host already")
        image = self.store.find(ImageRecord, offer.image)
        if image is None:
            raise NotFoundError(
                f"the image of {offer.name!r} ({offer.image[:12]}) is not on this host",
                hint="put the same image here first (build or import it), or move the VM cold",
            )
        check_resources("vm", offer.cpus, offer.memory)
        record = InstanceRecord(name=offer.name, uuid=offer.uuid, kind=InstanceKind.VM,
                                image=image.fingerprint, arch=offer.arch, cpus=offer.cpus,
                                memory=offer.memory, config=dict(offer.config), labels=dict(offer.labels))
        return record, image

    def _store(self, record: InstanceRecord, offer: Offer) -> InstanceRecord:
        """Stored with NICs of the same MACs and (where free) addresses."""
        if not offer.nics:
            return self.store.create(record)
        nics = self.lifecycle.nics
        requests = [NicRequest(network=n.network, ip=n.ip, mac=n.mac, limit=n.limit, model=n.model)
                    for n in offer.nics]  # fmt: skip
        with nics.networks.lock():
            record.nics = nics.allocate(record, requests, allow_host=any(n.allow_host for n in offer.nics))
            record = self.store.create(record)
        for name in sorted({nic.network for nic in record.nics}):
            nics.networks.reload(name)
        return record

    def _define(self, record: InstanceRecord, image: ImageRecord, paths: InstancePaths) -> Runtime:
        from virtkit.ops.images import image_store

        images = image_store(self.root, self.store)
        if paths.dir.exists():
            raise ConflictError(f"files of an instance {record.name!r} are left at {paths.dir}",
                                hint="remove them, or delete that instance")  # fmt: skip
        paths.dir.mkdir(parents=True, mode=0o750)
        atomic_write(paths.dir / INCOMING, json.dumps({"since": time.time()}))
        self.driver.prepare(record, image, images.path(image), paths)
        runtime = self.driver.generate(record, image, images.path(image), paths)
        atomic_write(paths.runtime, json.dumps(runtime.to_dict(), indent=2))
        return runtime

    @staticmethod
    def _exports(runtime: Runtime, offer: Offer) -> dict[str, str]:
        spec = VmSpec.from_dict(runtime.config)
        nodes = [f"disk{i}" for i, disk in enumerate(spec.disks) if not disk.readonly]
        if sorted(nodes) != sorted(offer.disks):
            raise SpecError(f"the source's disks ({', '.join(offer.disks) or 'none'}) are not this VM's "
                            f"here ({', '.join(nodes) or 'none'})")  # fmt: skip
        return {node: secrets.token_hex(16) for node in nodes}

    def finish(self, name: str) -> InstanceRecord:
        """The source has switched over: run the guest here."""
        record, paths = self._incoming(name)
        with self.store.lock("instance", record.name):
            migration.activate(self._monitor(record, paths))
            (paths.dir / INCOMING).unlink()
            record.state, record.started_at = InstanceState.RUNNING, time.time()
            record = self.store.put(record)
        events.emit(self.root, "instance", "moved-in", record.name)
        return record

    def abort(self, name: str) -> None:
        """Delete an instance still arriving (and nothing that is this host's own)."""
        record, paths = self._incoming(name)
        with self.store.lock("instance", record.name):
            self._remove(record, paths)
        events.emit(self.root, "instance", "incoming-discarded", record.name)

    def state(self, name: str) -> dict[str, Any]:
        """{"name", "incoming": still arriving, "state": what the driver sees}."""
        record = self.store.get(InstanceRecord, name)
        paths = InstancePaths.of(self.root, record.name)
        status = self.driver.status(record, paths)
        return {"name": name, "incoming": (paths.dir / INCOMING).exists(), "state": status.state.value}

    def discard_leftovers(self) -> list[str]:
        """Abort every instance still marked incoming (their source went on without them)."""
        dropped = []
        for record in self.store.list(InstanceRecord):
            if (InstancePaths.of(self.root, record.name).dir / INCOMING).exists():
                try:
                    self.abort(record.name)
                    dropped.append(record.name)
                except VirtkitError as exc:
                    log.warning("could not discard the incoming %s: %s", record.name, exc)
        return dropped

    def _incoming(self, name: str) -> tuple[InstanceRecord, InstancePaths]:
        record = self.store.get(InstanceRecord, name)
        paths = InstancePaths.of(self.root, record.name)
        if not (paths.dir / INCOMING).exists():
            raise StateError(f"instance {name!r} is not arriving by a live move: it is this host's own")
        return record, paths

    def _remove(self, record: InstanceRecord, paths: InstancePaths) -> None:
        try:
            self.driver.stop(record, paths, force=True, timeout=10.0)
        except VirtkitError as exc:
            log.debug("stopping the incoming %s: %s", record.name, exc)
        self.driver.cleanup(record, paths)
        self.lifecycle._remove(record, paths)

    @staticmethod
    def _monitor(record: InstanceRecord, paths: InstancePaths) -> Monitor:
        return Monitor(paths.monitor, name=record.name)


def _free_ports(host: str, count: int) -> list[int]:
    """`count` TCP ports free on `host` now (the kernel's choice; QEMU binds them a moment later)."""
    held, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
    except OSError as exc:
        raise StateError(f"cannot listen on {host} for the migration: {exc.strerror}") from None
    finally:
        for sock in held:
            sock.close()
    return ports
