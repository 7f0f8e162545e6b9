"""systemd as a system container's init: recognising it in an image's tree, and what the host must
give it.

systemd (252, Debian 12) boots in a container without CAP_SYS_ADMIN, as it does under podman's
`--systemd=always`, when the runtime has already mounted what it would mount itself (/run and
/run/lock as tmpfs: bundle.py does it for every system container), its environment says
`container=...` (no udev, no hwclock, no getty on tty1), and it can make its units' cgroups. On
a cgroup v1 host (hybrid or not) that last one is the controller-less name=systemd hierarchy:
the container's own cgroup there is bound writable at /sys/fs/cgroup/systemd (bundle
`_systemd_cgroup`), every controller stays read-only. Without a writable hierarchy systemd stops
at once ("Failed to allocate manager object") and the container is dead before it printed
anything, so the plan refuses such a host up front.

Stopping: SIGRTMIN+3 starts halt.target; once every unit is stopped systemd-shutdown, seeing it
is in a container and lacking CAP_SYS_BOOT, exits ("Exiting container."), which ends the
container with status 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.drivers.oci.inroot import resolve
from virtkit.drivers.oci.spec import ContainerSpec
from virtkit.errors import HostCapabilityError
from virtkit.logs import get_logger

if TYPE_CHECKING:
    from virtkit.host.cgroups import Mount

log = get_logger(__name__)

STOP_SIGNAL = "SIGRTMIN+3"
# What a delegated v1 cgroup's owner may write, as LXC hands them over: making sub-cgroups (the
# directory) and moving processes into them. Not notify_on_release of its own cgroup; the
# sub-cgroups it makes are its own, theirs included, so it can have the hierarchy's release agent
# (set at the hierarchy's root, which it cannot write) run when one empties: on a systemd host that
# agent is systemd's own cgroups-agent.
DELEGATED = ("cgroup.procs", "tasks", "cgroup.clone_children")


def resolve_in(rootfs: Path, path: str) -> str | None:
    """`path` with every symlink followed as the container would see it (inroot.py: absolute
    targets taken from `rootfs`, never from the host), as an absolute path inside the tree; None
    when it does not exist or the links loop."""
    found = resolve(rootfs, path)
    if found is None or not found.exists():
        return None
    return "/" + str(found.relative_to(rootfs)).lstrip(".")


def is_systemd(rootfs: Path, init: str) -> bool:
    """Whether the init at `init` in the tree is systemd (Debian's /sbin/init links to it)."""
    resolved = resolve_in(rootfs, init)
    return resolved is not None and resolved.rsplit("/", 1)[-1] == "systemd"


def host_hierarchy(mounts: list[Mount] | None = None) -> str:
    """Where this host mounts cgroup v1's name=systemd hierarchy (e.g. /sys/fs/cgroup/systemd).

    Refused, with what to do, where a systemd container cannot boot: a v1 host without that
    hierarchy, or a cgroup v2-only host (systemd would need its cgroup2 subtree writable, which
    virtkit does not yet delegate).
    """
    from virtkit.host.cgroups import read_mounts  # the host probes: for systemd containers only

    mounts = read_mounts(Path("/")) if mounts is None else mounts
    for mount in mounts:
        if mount.fstype == "cgroup" and "name=systemd" in mount.options:
            return mount.target
    if any(m.fstype == "cgroup2" and m.target == "/sys/fs/cgroup" for m in mounts):
        raise HostCapabilityError(
            "systemd containers are not supported yet on a cgroup v2-only host",
            hint="use an image whose init is not systemd, or a host with cgroup v1 or hybrid cgroups",
        )
    raise HostCapabilityError(
        "this host has no cgroup v1 name=systemd hierarchy: systemd cannot run as a container's init",
        hint="mkdir /sys/fs/cgroup/systemd && "
        "mount -t cgroup -o none,name=systemd systemd /sys/fs/cgroup/systemd",
    )


def exits_when_halted(spec: ContainerSpec) -> bool:
    """Whether the init ends the container by itself after its stop signal: systemd does once
    halted ("Exiting container."); busybox init stays behind as the only process left."""
    return spec.system and spec.stop_signal == STOP_SIGNAL


def delegate(spec: ContainerSpec) -> None:
    """Make the container's cgroup in the name=systemd hierarchy its root's own, before the
    runtime makes and joins it; needed in a user namespace only, where that root is not host root
    (systemd: "Failed to create /init.scope control group: Permission denied").

    The hierarchy has no controller, so owning a cgroup there moves processes between the
    container's own cgroups and nothing else; the runtime removes the tree when it deletes the
    container.
    """
    if not spec.systemd_hierarchy or not spec.uid_maps:
        return
    uid = next((m.host for m in spec.uid_maps if m.container == 0), None)
    gid = next((m.host for m in spec.gid_maps or spec.uid_maps if m.container == 0), None)
    if uid is None or gid is None:
        return  # its root is not mapped: nothing of it could run systemd anyway
    path = Path(spec.systemd_hierarchy) / spec.cgroup.lstrip("/")
    try:
        path.mkdir(parents=True, exist_ok=True)
        for entry in (path, *(path / name for name in DELEGATED)):
            os.chown(entry, uid, gid)
    except OSError as exc:
        raise HostCapabilityError(
            f"cannot give container {spec.name} its name=systemd cgroup {path}: {exc.strerror}",
            hint="systemd in a user namespace needs a writable cgroup v1 name=systemd hierarchy",
        ) from exc
    log.debug("%s: name=systemd cgroup %s delegated to %d:%d", spec.name, path, uid, gid)
