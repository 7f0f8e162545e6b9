"""From an instance record and its image to a `ContainerSpec`: every choice the container driver makes.

- System or application container: an image with an OCI config (entrypoint/cmd) runs that as an
  application; an image without one runs its init (`/sbin/init`) as a system container.
- Stopping: busybox init powers off on SIGUSR2, systemd halts on SIGRTMIN+3, an application gets
  SIGTERM (then, after the timeout, SIGKILL).
- Limits: `cpus` is a CFS quota (1.5 = one and a half host CPUs); `memory` is the cgroup ceiling.
- systemd as the init (systemd.py): a terminal for its console, its own name=systemd cgroup.
- Ids: in a user namespace, the container's 0..65535 are its own range of host ids (idmap.py).
"""

from __future__ import annotations

import json
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from virtkit.drivers.base import CGROUP_PARENT as PARENT
from virtkit.drivers.base import InstancePaths
from virtkit.drivers.oci import limits, systemd
from virtkit.drivers.oci.spec import ContainerSpec, PortSpec
from virtkit.errors import SpecError
from virtkit.images.staged import ROOTFS

if TYPE_CHECKING:
    from virtkit.drivers.oci.rootfs import Shift

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PERIOD = 100_000
NOFILE_SOFT = 1024
MAX_PROCESSES = 4_194_304  # the kernel's pid_max ceiling


class InstanceLike(Protocol):
    """What the plan reads of an instance: an InstanceRecord, or `virtkit run`'s unregistered one."""

    @property
    def name(self) -> str: ...
    @property
    def uuid(self) -> str: ...
    @property
    def cpus(self) -> float: ...
    @property
    def memory(self) -> int: ...
    @property
    def config(self) -> Mapping[str, str]: ...


class ImageLike(Protocol):
    """What the plan reads of an image: an ImageRecord, or its stored JSON (`ImageFacts`)."""

    @property
    def name(self) -> str: ...
    @property
    def kinds(self) -> Sequence[str]: ...
    @property
    def files(self) -> Mapping[str, str]: ...
    @property
    def container(self) -> Mapping[str, Any]: ...
    @property
    def properties(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class ImageFacts:
    """An image's stored JSON as the plan reads it, for `virtkit run`, which does without pydantic."""

    name: str
    kinds: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    container: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageFacts:
        return cls(str(data.get("name", "")), tuple(data.get("kinds") or ()), dict(data.get("files") or {}),
                   dict(data.get("container") or {}), dict(data.get("properties") or {}))  # fmt: skip


@dataclass(frozen=True)
class OneShot:
    """An instance that is not registered: `virtkit run --rm`'s. Its settings as a record's config."""

    name: str
    uuid: str
    cpus: float
    memory: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerFiles:
    """The container driver's files in the instance directory."""

    paths: InstancePaths

    @property
    def bundle(self) -> Path:
        return self.paths.dir / "bundle"

    @property
    def config(self) -> Path:
        return self.bundle / "config.json"

    @property
    def upper(self) -> Path:
        return self.paths.dir / "upper"

    @property
    def work(self) -> Path:
        return self.paths.dir / "work"

    @property
    def merged(self) -> Path:
        return self.paths.dir / "rootfs"


def container_id(record: InstanceLike) -> str:
    return f"{record.name}.{record.uuid.split('-')[0]}"


def cgroup_of(cid: str) -> str:
    """The container's cgroupsPath: absolute, so runc makes it at each hierarchy's root (a relative
    path would land under the caller's own cgroup)."""
    return f"/{PARENT}/{cid}"


def _nofile() -> tuple[int, int]:
    """RLIMIT_NOFILE for the container: runc fails to raise any limit above the caller's hard one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = hard if hard != resource.RLIM_INFINITY else 1 << 20
    return min(NOFILE_SOFT, hard), hard


def _process(
    image: ImageLike, rootfs: Path, wanted: Mapping[str, str]
) -> tuple[tuple[str, ...], tuple[str, ...], str, bool, str]:
    """(args, env, cwd, system, stop signal) from the image, or the command the user gave."""
    config = image.container or {}
    if wanted.get("command"):  # `virtkit run IMAGE -- CMD`: an application container of CMD
        env = tuple(config.get("env") or (DEFAULT_PATH,)) + tuple(_lines(wanted.get("env")))
        cwd = wanted.get("workdir") or str(config.get("workdir") or "/")
        return tuple(json.loads(wanted["command"])), env, cwd, False, "SIGTERM"
    entrypoint = list(config.get("entrypoint") or [])
    cmd = list(config.get("cmd") or [])
    if entrypoint or cmd:
        env = tuple(config.get("env") or (DEFAULT_PATH,))
        return tuple(entrypoint + cmd), env, str(config.get("workdir") or "/"), False, "SIGTERM"
    init = image.properties.get("init", "/sbin/init")
    if not (rootfs / init.lstrip("/")).exists() and not (rootfs / init.lstrip("/")).is_symlink():
        raise SpecError(
            f"image {image.name} has neither an OCI command nor an init ({init}) to run",
            hint="import an OCI image with an entrypoint, or a system image with /sbin/init",
        )
    signal = "SIGUSR2" if image.properties.get("os") == "busybox" else "SIGRTMIN+3"
    return (init,), (DEFAULT_PATH,), "/", True, signal


def _lines(text: str | None) -> list[str]:
    return [line for line in (text or "").splitlines() if line]


def build_spec(
    record: InstanceLike, image: ImageLike, image_dir: Path, paths: InstancePaths, ids: Shift | None = None
) -> ContainerSpec:
    """The container's spec; `ids`: its own host ids (idmap.py), in a user namespace (None: none)."""
    if "container" not in image.kinds or ROOTFS not in image.files:
        raise SpecError(f"image {image.name} cannot run as a container (it is for: {', '.join(image.kinds)})")
    rootfs = image_dir / image.files[ROOTFS]
    args, env, cwd, system, signal = _process(image, rootfs, record.config)
    # systemd makes its units' cgroups (in the host's name=systemd hierarchy, refused up front when
    # absent) and, as PID 1, writes only to /dev/console, which runc makes for a terminal alone.
    init_systemd = system and systemd.is_systemd(rootfs, args[0])
    hierarchy = systemd.host_hierarchy() if init_systemd else ""
    files = ContainerFiles(paths)
    cid = container_id(record)
    io_device, io_iops, io_bps = limits.disk(record.config, files.upper)
    wanted_privileged = limits.privileged(record.config)
    user = "" if system else str((image.container or {}).get("user") or "")
    uid, gid = limits.image_user(user, rootfs)
    return ContainerSpec(
        name=record.name, uuid=record.uuid, hostname=record.name, rootfs=str(files.merged),
        args=args, env=env, cwd=cwd, system=system, stop_signal=signal,
        cgroup=cgroup_of(cid),
        cpu_quota=round(record.cpus * PERIOD), cpu_period=PERIOD,
        memory=record.memory, memory_swap=record.memory,  # no swap beyond the memory limit
        pids=_processes(record),
        nofile=_nofile(),
        terminal=record.config.get("tty") == "true" or system,  # a system container's console: a pty
        systemd_hierarchy=hierarchy,
        uid_maps=ids.uid_maps() if ids else (), gid_maps=ids.gid_maps() if ids else (),
        cpuset=limits.cpu_set(record.config), io_device=io_device, io_iops=io_iops, io_bps=io_bps,
        privileged=wanted_privileged, caps=limits.caller_caps() if wanted_privileged else None,
        uid=uid, gid=gid, nics=_ports(record),
    )  # fmt: skip


def _ports(record: InstanceLike) -> tuple[PortSpec, ...]:
    from virtkit.network.addressing import bridge_of

    nics = getattr(record, "nics", ())  # `virtkit run`'s containers have none
    return tuple(PortSpec(nic.device, nic.mac, bridge_of(nic.network), nic.inner) for nic in nics)


def _processes(record: InstanceLike) -> int | None:
    text = record.config.get("processes")
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_PROCESSES:
        raise SpecError(f"invalid process limit {text!r}: expected a whole number from 1 to {MAX_PROCESSES}")
    return int(text)
