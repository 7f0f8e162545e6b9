"""Everything a container's OCI bundle needs, as one frozen value: the container driver's runtime
description.

`OciDriver.generate` fills a `ContainerSpec` from an instance record and its image;
`bundle.build_config` turns it into config.json with no other input (golden-file tested). The spec
is saved in the runtime beside the instance, so a later virtkit process finds the container's
files and how to stop it without the image logic.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class IdMap:
    """One user-namespace mapping: `size` ids from `container` in the container to `host` on the host."""

    container: int
    host: int
    size: int


@dataclass(frozen=True)
class PortSpec:
    """One NIC: a veth pair, `device` on the host enslaved to `bridge`, `inner` in the container."""

    device: str
    mac: str
    bridge: str
    inner: str = "eth0"


@dataclass(frozen=True)
class ContainerSpec:
    """One container as the OCI runtime will run it. Sizes in bytes; paths absolute."""

    name: str
    uuid: str
    hostname: str
    rootfs: str  # the merged overlay the runtime pivots into
    args: tuple[str, ...]  # the process: PID 1 of the container
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    terminal: bool = False
    # A system container runs an init as PID 1: it gets /run as tmpfs, a read-only view of its own
    # cgroup, `container=virtkit` in its environment, and is stopped with its init's own signal.
    system: bool = False
    stop_signal: str = "SIGTERM"
    cgroup: str = ""  # absolute cgroupsPath, e.g. /virtkit/NAME.UUID8
    # For a systemd init on a cgroup v1 host: where the host mounts the controller-less
    # name=systemd hierarchy (from /proc/self/mountinfo, e.g. /sys/fs/cgroup/systemd). The
    # container's own cgroup in it is bound writable, since systemd stops at boot when it cannot
    # make its units' cgroups ("Failed to allocate manager object"). "": every cgroup read-only.
    systemd_hierarchy: str = ""
    cpu_quota: int | None = None  # microseconds per period
    cpu_period: int = 100_000
    cpuset: str | None = None  # host CPUs, e.g. "0" or "0-1"
    memory: int | None = None  # bytes
    memory_swap: int | None = None  # memory + swap, in bytes (the OCI meaning); None: as memory
    pids: int | None = None
    io_weight: int | None = None  # 10..1000
    # Throttles on the disk holding the upper layer ("MAJOR:MINOR"): each of reads and writes gets
    # the rate (cgroup v1 keeps them apart).
    io_device: str = ""
    io_iops: int | None = None
    io_bps: int | None = None
    nofile: tuple[int, int] = (1024, 1024)  # RLIMIT_NOFILE (soft, hard), at most the caller's hard limit
    uid_maps: tuple[IdMap, ...] = ()  # empty: no user namespace
    gid_maps: tuple[IdMap, ...] = ()
    privileged: bool = False  # opt-in: all capabilities, no seccomp, no masked paths
    # The capabilities granted (CAP_* names); None: Docker's default set, or every capability
    # when privileged. runc cannot grant one its caller lacks ("unable to apply caps"), so on a
    # host whose root lacks some (CAP_SYS_RESOURCE here) a privileged spec lists the caller's.
    caps: tuple[str, ...] | None = None
    # The host's architecture (uname's machine, as platform.machine()): the seccomp profile is per
    # architecture.
    # Saved with the spec, so build_config needs no host access; older saved specs get the host's.
    arch: str = field(default_factory=lambda: os.uname().machine)
    nics: tuple[PortSpec, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerSpec:
        values = dict(data)
        for key in ("args", "env", "additional_gids"):
            values[key] = tuple(values.get(key, ()))
        values["nofile"] = tuple(values.get("nofile", (1024, 1024)))
        values["uid_maps"] = tuple(IdMap(**m) for m in values.get("uid_maps", ()))
        values["gid_maps"] = tuple(IdMap(**m) for m in values.get("gid_maps", ()))
        if values.get("caps") is not None:
            values["caps"] = tuple(values["caps"])
        values["nics"] = tuple(PortSpec(**nic) for nic in values.get("nics", ()))
        return cls(**values)
