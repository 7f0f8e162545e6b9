"""The Python library: virtkit's verbs for scripts, over the same ops/ layer the CLI uses.

    from virtkit import Host

    with Host(root="/var/lib/virtkit") as host:
        vm = host.launch("tiny", "web1", kind="vm", cpus=2, memory="256MiB", wait=True)
        print(vm.exec(["uname", "-a"]).stdout.decode())
        vm.snapshot("s1")
        vm.stop()
        vm.delete()

Every method raises the VirtkitError subclass the CLI would report (SpecError for bad input,
NotFoundError, StateError, ...), with the same message and hint. Sizes are bytes or strings
("256MiB"); an Instance reads its record and live state afresh on each access, so it never goes
stale. Nothing here keeps a process running: instances outlive the Host object, as they outlive
a `virtkit` command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from virtkit.model import InstanceKind, InstanceRecord, InstanceState
from virtkit.units import parse_size, validate_name

if TYPE_CHECKING:
    from virtkit.drivers.base import ExecResult
    from virtkit.model import ImageRecord, SnapshotRecord
    from virtkit.ops.lifecycle import InstanceView, Lifecycle
    from virtkit.store import Store

DEFAULT_ROOT = "/var/lib/virtkit"


class Host:
    """One state root on this machine: its instances, images and networks."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        from virtkit.store import open_store

        self.root = Path(root or os.environ.get("VIRTKIT_ROOT") or DEFAULT_ROOT)
        self.store: Store = open_store(self.root)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:  # fmt: skip
        self.close()

    def lifecycle(self) -> Lifecycle:
        from virtkit.ops.lifecycle import Lifecycle

        return Lifecycle(self.root, self.store)

    # --- instances ------------------------------------------------------------------------------

    def launch(self, image: str, name: str, *, kind: str | None = None, cpus: float = 1,
               memory: int | str = "256MiB", disk: int | str | None = None,
               networks: Sequence[str] = (), publish: Sequence[str] = (),
               config: Mapping[str, str] | None = None, arch: str | None = None,
               start: bool = True, wait: bool = False) -> Instance:  # fmt: skip
        """Create instance `name` from `image` and (unless `start=False`) start it; with `wait`,
        return once the guest says it is ready. `networks` and `publish` take the CLI's forms:
        "web,ip=10.20.30.5,limit=10mbit" and "8080:80/tcp"."""
        from virtkit.ops.lifecycle import Request
        from virtkit.ops.nics import parse_nic, parse_publish

        request = Request(
            image=image, name=validate_name(name), kind=InstanceKind(kind) if kind else None, cpus=cpus,
            memory=parse_size(memory, what="memory size"),
            disk=parse_size(disk, what="disk size") if disk is not None else None,
            config=dict(config or {}), arch=arch,
            nics=tuple(parse_nic(text) for text in networks),
            publish=tuple(parse_publish(text, name) for text in publish),
        )  # fmt: skip
        life = self.lifecycle()
        if start:
            life.launch(request, wait=wait)
        else:
            life.create(request)
        return Instance(self, request.name)

    def create(self, image: str, name: str, **options: Any) -> Instance:
        """As `launch`, without starting it."""
        return self.launch(image, name, start=False, **options)

    def instance(self, name: str) -> Instance:
        """The existing instance `name` (NotFoundError otherwise)."""
        self.store.get(InstanceRecord, validate_name(name))
        return Instance(self, name)

    def instances(self, labels: Mapping[str, str] | None = None) -> list[Instance]:
        """Every instance (by name), or those carrying all of `labels`."""
        wanted = dict(labels or {})
        records = sorted(self.store.list(InstanceRecord), key=lambda r: r.name)
        return [Instance(self, r.name) for r in records if wanted.items() <= r.labels.items()]

    # --- images and networks --------------------------------------------------------------------

    def images(self) -> list[ImageRecord]:
        from virtkit.ops.images import list_images

        return list_images(self.root, self.store)

    def build_tiny_image(self, arch: str | None = None) -> ImageRecord:
        """`virtkit image build tiny`: the small busybox guest (a few seconds once cached)."""
        import platform

        from virtkit.ops.images import build_tiny_image

        return build_tiny_image(self.root, self.store, arch=arch or platform.machine())

    def create_network(self, name: str, *, subnet: str | None = None, type: str = "nat") -> None:
        from virtkit.ops.networks import Networks

        Networks(self.root, self.store).create(name, type=type, subnet=subnet)

    def delete_network(self, name: str) -> None:
        from virtkit.ops.networks import Networks

        Networks(self.root, self.store).delete(name)

    def networks(self) -> list[str]:
        from virtkit.ops.networks import Networks

        return [view.record.name for view in Networks(self.root, self.store).views()]


class Instance:
    """One instance of a Host, by name. Its record and state are read when asked for."""

    def __init__(self, host: Host, name: str) -> None:
        self.host = host
        self.name = name

    def __repr__(self) -> str:
        return f"Instance({self.name!r})"

    def view(self) -> InstanceView:
        return self.host.lifecycle().view(self.name)

    @property
    def record(self) -> InstanceRecord:
        return self.host.store.get(InstanceRecord, self.name)

    @property
    def state(self) -> InstanceState:
        """The live state, as `virtkit list` shows it."""
        return self.view().status.state

    @property
    def kind(self) -> InstanceKind:
        return self.record.kind

    def start(self, *, wait: bool = False) -> Instance:
        self.host.lifecycle().start(self.name, wait=wait)
        return self

    def stop(self, *, force: bool = False, timeout: float = 30) -> Instance:
        self.host.lifecycle().stop(self.name, force=force, timeout=timeout)
        return self

    def restart(self, *, force: bool = False, wait: bool = False) -> Instance:
        self.host.lifecycle().restart(self.name, force=force, wait=wait)
        return self

    def pause(self) -> Instance:
        self.host.lifecycle().pause(self.name)
        return self

    def resume(self) -> Instance:
        self.host.lifecycle().resume(self.name)
        return self

    def delete(self, *, force: bool = False) -> None:
        self.host.lifecycle().delete(self.name, force=force)

    def exec(self, command: Sequence[str], *, timeout: float = 60) -> ExecResult:
        """Run `command` inside; its exit code, stdout and stderr (bytes). A non-zero exit is not
        an error: look at `exit_code`."""
        return self.host.lifecycle().exec(self.name, list(command), timeout=timeout)

    def set(self, **settings: str | int | float) -> Instance:
        """`virtkit set NAME key=value`: set(memory="192MiB", cpus=2); dots in keys as
        underscores are not guessed: pass `**{"cpu.allowance": "50%"}`."""
        from virtkit.ops.settings import Settings

        Settings(self.host.root, self.host.store).set(self.name, {k: str(v) for k, v in settings.items()})
        return self

    # --- storage --------------------------------------------------------------------------------

    def snapshot(self, name: str | None = None, *, stateful: bool = False) -> SnapshotRecord:
        from virtkit.ops.snapshots import Snapshots

        record, _notes = Snapshots(self.host.root, self.host.store).create(self.name, name, stateful=stateful)
        return record

    def snapshots(self) -> list[SnapshotRecord]:
        from virtkit.ops.snapshots import Snapshots

        return Snapshots(self.host.root, self.host.store).list(self.name)

    def restore(self, snapshot: str, *, wait: bool = False) -> Instance:
        from virtkit.ops.snapshots import Snapshots

        Snapshots(self.host.root, self.host.store).restore(self.name, snapshot, wait=wait)
        return self

    def delete_snapshot(self, snapshot: str) -> None:
        from virtkit.ops.snapshots import Snapshots

        Snapshots(self.host.root, self.host.store).delete(self.name, snapshot)

    def copy(self, target: str, *, full: bool = False, snapshot: str | None = None) -> Instance:
        """A linked clone (or `full` copy) named `target`, stopped; returns it."""
        from virtkit.ops.copy import Copies

        copied = Copies(self.host.root, self.host.store).copy(self.name, target, snapshot=snapshot, full=full)
        return Instance(self.host, copied.record.name)

    def export(self, path: str | os.PathLike[str], *, compression: str = "zstd") -> Path:
        """`virtkit export`: a portable archive at `path` (which must not exist)."""
        from virtkit.ops.backup import Backups

        backups = Backups(self.host.root, self.host.store)
        return backups.export(self.name, Path(path), compression=compression).path
