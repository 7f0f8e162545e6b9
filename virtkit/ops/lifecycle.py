"""Instance lifecycle: create, launch, start, stop, restart, pause, resume, delete, and the live view.

Each verb holds the instance's lock, checks the live state (re-derived by the driver, never trusted
from the store alone), and runs its steps so that a failure undoes what was done: a failed create or
launch leaves no record and no files; a failed start leaves the instance stopped.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from virtkit import cloudinit
from virtkit.drivers.base import Driver, ExecResult, InstancePaths, Runtime, Status, get_driver
from virtkit.drivers.console import Console
from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError, StoreError
from virtkit.images.store import ImageStore
from virtkit.model import (
    Forward,
    ImageRecord,
    InstanceKind,
    InstanceRecord,
    InstanceState,
    MiB,
    validate_name,
)
from virtkit.ops import events
from virtkit.ops.networks import Networks
from virtkit.ops.nics import NicRequest, Nics
from virtkit.ops.resources import check_resources
from virtkit.store import Store, atomic_write

log = logging.getLogger(__name__)

DriverFor = Callable[[InstanceKind], Driver]

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
FOLLOW_POLL = 0.1  # `logs -f`: how often the log is read for more
FOLLOW_CHECK = 1.0  # and how often the instance is asked whether it still runs


@dataclass(frozen=True)
class InstanceView:
    """An instance's record with its live status."""

    record: InstanceRecord
    status: Status

    def to_dict(self) -> dict[str, object]:
        data = self.record.model_dump(mode="json")
        data["state"] = self.status.state.value
        data["pid"] = self.status.pid
        data["reason"] = self.status.reason or None
        data["live"] = self.status.details
        return data


@dataclass(frozen=True)
class Request:
    """What `create`/`launch` are asked to make, as parsed from the command line."""

    image: str
    name: str
    kind: InstanceKind | None = None
    cpus: float = 1
    memory: int = 256 * MiB
    disk: int | None = None
    config: dict[str, str] | None = None
    arch: str | None = None
    nics: tuple[NicRequest, ...] = ()
    publish: tuple[Forward, ...] = ()
    allow_host: bool = False
    labels: dict[str, str] | None = None  # key=value tags (`virtkit apply` marks what it owns)


class Lifecycle:
    """The lifecycle verbs over one state root."""

    def __init__(self, root: Path, store: Store, drivers: DriverFor = get_driver) -> None:
        self.root = root
        self.store = store
        self.drivers = drivers
        self.nics = Nics(Networks(root, store))

    def paths(self, name: str) -> InstancePaths:
        return InstancePaths.of(self.root, name)

    # --- reading --------------------------------------------------------------------------------

    def view(self, name: str) -> InstanceView:
        record = self.store.get(InstanceRecord, validate_name(name))
        return InstanceView(record, self._status(record))

    def views(self) -> list[InstanceView]:
        records = sorted(self.store.list(InstanceRecord), key=lambda r: r.name)
        return [InstanceView(record, self._status(record)) for record in records]

    def _status(self, record: InstanceRecord) -> Status:
        return self.drivers(record.kind).status(record, self.paths(record.name))

    def runtime(self, name: str) -> Runtime:
        record = self.store.get(InstanceRecord, validate_name(name))
        return self._load_runtime(record)

    # --- making ---------------------------------------------------------------------------------

    def create(self, request: Request) -> tuple[InstanceRecord, Runtime]:
        """Define an instance (record, files, saved runtime) without starting it."""
        from virtkit.ops.images import image_store

        name = validate_name(request.name)
        images = image_store(self.root, self.store)
        image = self._image(images, request)
        record, given = self._record(request, image)
        kind = record.kind
        driver = self.drivers(kind)
        paths = self.paths(name)
        with self.store.lock("instance", name):
            record = self._store_new(record, request)
            try:
                self.nics.published(record, request.publish)
                if paths.dir.exists():  # left by a crash: no record owns it, since ours is new
                    log.warning("removing leftover files of a previous %s at %s", name, paths.dir)
                    shutil.rmtree(paths.dir)
                paths.dir.mkdir(parents=True, mode=0o750)
                cloudinit.save(given, paths.dir)  # what the user's files held, for the driver
                driver.prepare(record, image, images.path(image), paths)
                runtime = driver.generate(record, image, images.path(image), paths)
                atomic_write(paths.runtime, json.dumps(runtime.to_dict(), indent=2))
            except BaseException:
                self._remove(record, paths)
                raise
        events.emit(self.root, "instance", "created", name, kind=kind.value, image=image.fingerprint)
        return record, runtime

    def _store_new(self, record: InstanceRecord, request: Request) -> InstanceRecord:
        """Store the new record, with the NICs it asks for (their addresses taken in the same step)."""
        if not request.nics:
            if request.publish:
                raise SpecError("--publish needs a NIC: add --network NAME")
            return self.store.create(record)
        with self.nics.networks.lock():
            record.nics = self.nics.allocate(record, request.nics, allow_host=request.allow_host)
            record = self.store.create(record)
        for name in sorted({nic.network for nic in record.nics}):
            self.nics.networks.reload(name)
        return record

    def preview(self, request: Request) -> Runtime:
        """The runtime `create` would save for `request`, made and checked the same way; nothing is
        created."""
        from virtkit.ops.images import image_store

        images = image_store(self.root, self.store)
        image = self._image(images, request)
        record, _given = self._record(request, image)
        if request.publish and not request.nics:
            raise SpecError("--publish needs a NIC: add --network NAME")
        record.nics = self.nics.allocate(record, request.nics, allow_host=request.allow_host, plan_only=True)
        return self.drivers(record.kind).generate(record, image, images.path(image), self.paths(record.name))

    def exec(self, name: str, argv: list[str], *, timeout: float) -> ExecResult:
        """Run `argv` inside a running instance."""
        record = self.store.get(InstanceRecord, validate_name(name))
        driver = self.drivers(record.kind)
        paths = self.paths(record.name)
        state = driver.status(record, paths).state
        if state is not InstanceState.RUNNING:
            raise StateError(f"instance {name!r} is {state.value}: start it first")
        return driver.exec(record, paths, argv, timeout)

    def exec_attached(self, name: str, argv: list[str], *, tty: bool, timeout: float) -> int:
        """Run `argv` inside a running instance with the caller's stdio; its exit status."""
        record = self.store.get(InstanceRecord, validate_name(name))
        driver = self.drivers(record.kind)
        paths = self.paths(record.name)
        state = driver.status(record, paths).state
        if state is not InstanceState.RUNNING:
            raise StateError(f"instance {name!r} is {state.value}: start it first")
        return driver.exec_attached(record, paths, argv, tty=tty, timeout=timeout)

    def logs(self, name: str, *, follow: bool = False) -> Iterator[bytes]:
        """What the instance has written to its console, as it wrote it; with `follow`, then what it
        writes until it stops (or the caller stops reading)."""
        record = self.store.get(InstanceRecord, validate_name(name))
        driver = self.drivers(record.kind)
        paths = self.paths(record.name)
        decode, offset, checked = driver.log_decoder(), 0, time.monotonic()
        while True:
            data, offset = _read_from(paths.console_log, offset)
            if data:
                yield decode(data)
            if not follow:
                return
            if time.monotonic() - checked >= FOLLOW_CHECK:
                checked = time.monotonic()
                if driver.status(record, paths).state not in (InstanceState.RUNNING, InstanceState.PAUSED):
                    data, offset = _read_from(paths.console_log, offset)
                    yield decode(data)
                    return
            time.sleep(FOLLOW_POLL)

    def open_console(self, name: str) -> Console:
        """Attach to a running (or paused) instance's console."""
        record = self.store.get(InstanceRecord, validate_name(name))
        driver = self.drivers(record.kind)
        paths = self.paths(record.name)
        state = driver.status(record, paths).state
        if state not in (InstanceState.RUNNING, InstanceState.PAUSED):
            hint = f"see what it wrote: virtkit logs {name}"
            message = f"instance {name!r} is not running ({state.value}): its console is closed"
            raise StateError(message, hint=hint)
        return driver.open_console(record, paths)

    def launch(self, request: Request, *, wait: bool = False) -> tuple[InstanceRecord, Runtime]:
        """Create and start; if starting fails, the new instance is removed again."""
        record, runtime = self.create(request)
        try:
            record = self.start(record.name, wait=wait)
        except BaseException:
            with self.store.lock("instance", record.name):
                driver = self.drivers(record.kind)
                paths = self.paths(record.name)
                if driver.status(record, paths).state is not InstanceState.STOPPED:
                    driver.stop(record, paths, force=True, timeout=STOP_TIMEOUT)
                driver.cleanup(record, paths)
                self._remove(record, paths)
            raise
        return record, runtime

    @staticmethod
    def _image(images: ImageStore, request: Request) -> ImageRecord:
        """The image `request` names; with an architecture, `tiny` also finds `tiny-aarch64`."""
        if request.arch is None:
            return images.resolve(request.image)
        try:
            image = images.resolve(f"{request.image}-{request.arch}")
        except NotFoundError:
            image = images.resolve(request.image)
        if image.arch != request.arch:
            raise SpecError(
                f"image {request.image!r} is for {image.arch}, not {request.arch}",
                hint=f"build one with: virtkit image build {request.image} --arch {request.arch}"
                if request.image in ("tiny", "debian")
                else "import or build an image for that architecture",
            )
        return image

    def _record(self, request: Request, image: ImageRecord) -> tuple[InstanceRecord, cloudinit.UserInput]:
        """The record `request` asks for, checked against the image and the host, and what the
        cloud-init files it names hold (read and checked now; the record says what they held)."""
        kind = self._kind(request.kind, image)
        check_resources(kind, request.cpus, request.memory)
        config, given = cloudinit.take_inputs(dict(request.config or {}))
        if request.disk is not None:
            if kind is InstanceKind.CONTAINER:
                raise SpecError("--disk sizes a VM's root disk; a container's root filesystem is a "
                                "directory with no size of its own",
                                hint="give the container a volume: virtkit volume create default NAME "
                                "--size SIZE, then virtkit volume attach")
            config["disk_size"] = str(request.disk)
        return InstanceRecord(
            name=validate_name(request.name),
            kind=kind,
            image=image.fingerprint,
            arch=image.arch,
            cpus=request.cpus,
            memory=request.memory,
            config=config,
            labels=dict(request.labels or {}),
        ), given

    def _kind(self, wanted: InstanceKind | None, image: ImageRecord) -> InstanceKind:
        kinds = list(image.kinds)
        if wanted is None:
            wanted = default_kind(image)
        if wanted not in kinds:
            can = " or ".join(k.value for k in kinds) or "nothing"
            raise SpecError(
                f"image {image.aliases[0] if image.aliases else image.fingerprint[:12]} cannot run as a "
                f"{wanted.value} (it can run as {can})",
                hint=f"use --{kinds[0].value}" if kinds else None,
            )
        return wanted

    # --- running --------------------------------------------------------------------------------

    def start(self, name: str, *, wait: bool = False, timeout: float = READY_TIMEOUT) -> InstanceRecord:
        record = self.store.get(InstanceRecord, validate_name(name))
        driver = self.drivers(record.kind)
        paths = self.paths(record.name)
        with self.store.lock("instance", record.name):
            state = driver.status(record, paths).state
            if state is not InstanceState.STOPPED and state is not InstanceState.ERROR:
                raise StateError(f"instance {name!r} is already {state.value}")
            driver.cleanup(record, paths)  # sockets and pidfile of a previous run
            runtime = self._load_runtime(record)
            started = time.time()
            self.nics.before_start(record)
            driver.start(record, runtime, paths, plugged=lambda: self.nics.ports_ready(record))
            boot: dict[str, float] = {}
            try:
                if wait:
                    boot = driver.wait_ready(record, paths, timeout)
            except BaseException:
                driver.stop(record, paths, force=True, timeout=STOP_TIMEOUT)
                driver.cleanup(record, paths)
                raise
            record.state, record.started_at, record.boot = InstanceState.RUNNING, started, boot
            record = self.store.put(record)
        events.emit(self.root, "instance", "started", record.name, boot=boot)
        return record

    def run_foreground(self, name: str) -> tuple[int, str]:
        """Start a stopped instance with the caller's stdio and wait until it ends (`virtkit run`).

        The lock is held to start it, not while it runs: `virtkit stop` from elsewhere must work."""
        record = self.store.get(InstanceRecord, validate_name(name))
        driver = self.drivers(record.kind)
        paths = self.paths(record.name)
        with self.store.lock("instance", record.name):
            state = driver.status(record, paths).state
            if state is not InstanceState.STOPPED and state is not InstanceState.ERROR:
                raise StateError(f"instance {name!r} is already {state.value}")
            driver.cleanup(record, paths)
            runtime = self._load_runtime(record)
            record.state, record.started_at = InstanceState.RUNNING, time.time()
            self.store.put(record)
        try:
            return driver.run_foreground(record, runtime, paths)
        finally:
            with self.store.lock("instance", record.name):
                found = self.store.find(InstanceRecord, record.name)
                if found is not None:  # deleted (--force) while it ran: nothing to record
                    found.state = InstanceState.STOPPED
                    self.store.put(found)

    def stop(self, name: str, *, force: bool = False, timeout: float = STOP_TIMEOUT) -> InstanceRecord:
        def act(record: InstanceRecord, driver: Driver, paths: InstancePaths, state: InstanceState) -> None:
            if state is InstanceState.STOPPED:
                raise StateError(f"instance {name!r} is already stopped")
            driver.stop(record, paths, force=force, timeout=timeout)
            driver.cleanup(record, paths)

        return self._change(name, act, InstanceState.STOPPED, "stopped")

    def restart(
        self, name: str, *, force: bool = False, timeout: float = STOP_TIMEOUT, wait: bool = False
    ) -> InstanceRecord:
        view = self.view(name)
        if view.status.state is not InstanceState.STOPPED:
            self.stop(name, force=force, timeout=timeout)
        return self.start(name, wait=wait)

    def pause(self, name: str) -> InstanceRecord:
        def act(record: InstanceRecord, driver: Driver, paths: InstancePaths, state: InstanceState) -> None:
            if state is not InstanceState.RUNNING:
                raise StateError(f"instance {name!r} is {state.value}: only a running instance can be paused")
            driver.pause(record, paths)

        return self._change(name, act, InstanceState.PAUSED, "paused")

    def resume(self, name: str) -> InstanceRecord:
        def act(record: InstanceRecord, driver: Driver, paths: InstancePaths, state: InstanceState) -> None:
            if state is not InstanceState.PAUSED:
                raise StateError(f"instance {name!r} is {state.value}: only a paused instance can be resumed")
            driver.resume(record, paths)

        return self._change(name, act, InstanceState.RUNNING, "resumed")

    def delete(self, name: str, *, force: bool = False) -> InstanceRecord:
        record = self.store.get(InstanceRecord, validate_name(name))
        driver = self.drivers(record.kind)
        paths = self.paths(record.name)
        with self.store.lock("instance", record.name):
            state = driver.status(record, paths).state
            if state is not InstanceState.STOPPED and state is not InstanceState.ERROR and not force:
                raise StateError(
                    f"instance {name!r} is {state.value}: stop it first",
                    hint=f"or delete it anyway: virtkit delete --force {name}",
                )
            _refuse_if_cloned(self.root, self.store, record, force=force)
            if state is not InstanceState.STOPPED and state is not InstanceState.ERROR:
                driver.stop(record, paths, force=True, timeout=STOP_TIMEOUT)
            driver.cleanup(record, paths)
            self._remove(record, paths)
        events.emit(self.root, "instance", "deleted", record.name)
        if (self.root / "layers").exists():
            from virtkit.storage.layers import collect

            collect(self.root, self.store)  # the layers only it used (docs/clones.md)
        return record

    def _change(
        self,
        name: str,
        act: Callable[[InstanceRecord, Driver, InstancePaths, InstanceState], None],
        new_state: InstanceState,
        event: str,
    ) -> InstanceRecord:
        record = self.store.get(InstanceRecord, validate_name(name))
        driver = self.drivers(record.kind)
        paths = self.paths(record.name)
        with self.store.lock("instance", record.name):
            act(record, driver, paths, driver.status(record, paths).state)
            record.state = new_state
            record = self.store.put(record)
        events.emit(self.root, "instance", event, record.name)
        return record

    # --- files ----------------------------------------------------------------------------------

    def _load_runtime(self, record: InstanceRecord) -> Runtime:
        path = self.paths(record.name).runtime
        try:
            return Runtime.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise StoreError(
                f"the saved runtime of instance {record.name!r} cannot be read ({path}): {exc}",
                hint=f"delete and re-create the instance: virtkit delete {record.name}",
            ) from exc

    def _remove(self, record: InstanceRecord, paths: InstancePaths) -> None:
        """Remove an instance's files, then its record, then its volumes' claims and what its networks
        held of it."""
        if paths.dir.exists():
            shutil.rmtree(paths.dir)
        if self.store.find(InstanceRecord, record.name) is not None:
            self.store.delete(InstanceRecord, record.name)
        from virtkit.ops.storage import Storage

        Storage(self.root, self.store).release_all(record.name)  # volumes outlive it, detached (as Incus's)
        self.nics.forget(record)
        with_root = self.root / "instances"
        try:  # a delete beside this one (delete --all) may remove it first, a create fill it meanwhile
            if not os.listdir(with_root):
                with_root.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                raise


def default_kind(image: ImageRecord) -> InstanceKind:
    """Like Incus: a container when the image can be one, else what it can be."""
    kinds = list(image.kinds)
    return InstanceKind.CONTAINER if InstanceKind.CONTAINER in kinds or not kinds else kinds[0]


def _refuse_if_cloned(root: Path, store: Store, record: InstanceRecord, *, force: bool) -> None:
    """ConflictError naming the linked clones resting on a layer frozen from `record`, unless
    `force` (the layers then stay, for the clones: docs/clones.md)."""
    if not (root / "layers").exists():
        return
    from virtkit.storage.layers import dependents

    clones = dependents(store, root, record)
    if clones and not force:
        raise ConflictError(
            f"instance {record.name!r} has linked clones resting on layers frozen from it: "
            + ", ".join(clones),
            hint=f"delete it anyway, keeping the layers for them: virtkit delete --force {record.name}; "
            f"or flatten them first: virtkit copy --flatten {clones[0]}",
        )
    if clones:
        log.info("deleting %s; its layers stay for %s", record.name, ", ".join(clones))


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """What `path` holds past `offset`, and the new offset. Not through a symlink: the console log
    of a VM is written by QEMU's unprivileged user. A log cut shorter starts over."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", 0
    except OSError as exc:
        raise StateError(f"cannot read the console log {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as log:
        if os.fstat(log.fileno()).st_size < offset:
            offset = 0
        log.seek(offset)
        data = log.read()
    return data, offset + len(data)
