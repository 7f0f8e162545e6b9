"""From an instance record and its image to a `ContainerSpec`: every choice the container driver makes.

- System or application container: an image with an OCI config (entrypoint/cmd) runs that as an
  application; an image without one runs its init (`/sbin/init`) as a system container.
- Stopping: busybox init powers off on SIGUSR2, systemd halts on SIGRTMIN+3, an application gets
  SIGTERM (then, after the timeout, SIGKILL).
- Limits: `cpus` is a CFS quota (1.5 = one and a half host CPUs); `memory` is the cgroup ceiling.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

from virtkit.drivers.base import InstancePaths
from virtkit.drivers.cgroup import PARENT
from virtkit.drivers.oci.spec import ContainerSpec
from virtkit.errors import SpecError
from virtkit.images.staged import ROOTFS
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PERIOD = 100_000
NOFILE_SOFT = 1024
MAX_PROCESSES = 4_194_304  # the kernel's pid_max ceiling


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


def container_id(record: InstanceRecord) -> str:
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


def _process(image: ImageRecord, rootfs: Path) -> tuple[tuple[str, ...], tuple[str, ...], str, bool, str]:
    """(args, env, cwd, system, stop signal) from the image."""
    config = image.container or {}
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


def build_spec(
    record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
) -> ContainerSpec:
    if InstanceKind.CONTAINER not in image.kinds or ROOTFS not in image.files:
        raise SpecError(f"image {image.name} cannot run as a container (it is for: {', '.join(image.kinds)})")
    args, env, cwd, system, signal = _process(image, image_dir / image.files[ROOTFS])
    files = ContainerFiles(paths)
    cid = container_id(record)
    return ContainerSpec(
        name=record.name, uuid=record.uuid, hostname=record.name, rootfs=str(files.merged),
        args=args, env=env, cwd=cwd, system=system, stop_signal=signal,
        cgroup=cgroup_of(cid),
        cpu_quota=round(record.cpus * PERIOD), cpu_period=PERIOD,
        memory=record.memory, memory_swap=record.memory,  # no swap beyond the memory limit
        pids=_processes(record),
        nofile=_nofile(),
    )  # fmt: skip


def _processes(record: InstanceRecord) -> int | None:
    text = record.config.get("processes")
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_PROCESSES:
        raise SpecError(f"invalid process limit {text!r}: expected a whole number from 1 to {MAX_PROCESSES}")
    return int(text)
