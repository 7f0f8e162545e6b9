"""A container's config.json (OCI runtime-spec 1.0.2): a pure function of its `ContainerSpec`.

No file or host is read: the same spec always gives the same document (golden-file tested), which
is saved beside the instance and given to runc. The defaults are Docker's, made a little
stricter (moby daemon/oci_linux.go and oci/defaults.go, `runc spec`):

- process: Docker's 14 capabilities, no-new-privileges (so setuid and file capabilities cannot
  raise them: `sudo` from a non-root user does not work inside), RLIMIT_NOFILE from the spec
  (which the plan clamped to the caller's hard limit: runc cannot raise one).
- namespaces: pid, network, ipc, uts, mount, cgroup (the container sees its own cgroup as /);
  user, when the spec maps ids.
- /proc with its kernel-wide files masked or read-only, /sys read-only, the cgroup tree
  read-only: on cgroup v1 a writable one would let root inside raise its own limits. A systemd
  init gets its own name=systemd subtree writable, which holds no limit (`_systemd_cgroup`).
- a system container gets /run and /run/lock as tmpfs, and `container=virtkit` in its env.
- the device cgroup denies everything, then allows the nodes runc makes in /dev itself (null,
  zero, full, random, urandom, tty) and the ptys; so `linux.devices` stays empty. runc 1.1 adds
  its own rules after ours (mknod of any node, and /dev/net/tun), which a config cannot remove.
- seccomp: the allowlist in seccomp.py.
- volumes (mounts.py): after every other mount, each attached filesystem volume bound from its
  staging point (where virtkit attaches it, idmapped, at each start) at its path inside, `nodev`.

`privileged` drops the restrictions, as `docker run --privileged` does: all capabilities, no
seccomp, no masked paths, /sys and the cgroup tree writable, every device allowed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from virtkit.drivers.oci.mounts import VolumeMount, bind
from virtkit.drivers.oci.seccomp import default_profile
from virtkit.drivers.oci.spec import ContainerSpec, IdMap
from virtkit.errors import SpecError

OCI_VERSION = "1.0.2"
ANNOTATION_PREFIX = "org.virtkit"
TTY_GID = 5  # the `tty` group that owns ptys (gid=5 on devpts), as in Debian and Docker

# Docker's default set: enough for a package manager, a web server and an init (chown, setuid,
# binding port 80), none of the ones that reach beyond the container (SYS_ADMIN, NET_ADMIN, ...).
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip
# Every capability up to CAP_CHECKPOINT_RESTORE (40), in kernel order. runc ignores, with a
# warning, the ones this kernel does not know, but fails on one its caller lacks (spec.caps).
ALL_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

# Files that show or change the host, not the container: hidden (an empty file or directory
# mounted over them) ...
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)  # fmt: skip
# ... or readable but not writable (/proc/sys is kernel-wide except the namespaced sysctls).
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# (major, minor or None for any, what it is): char devices every container may read and write.
DEVICES: tuple[tuple[int, int | None, str], ...] = (
    (1, 3, "null"), (1, 5, "zero"), (1, 7, "full"), (1, 8, "random"), (1, 9, "urandom"),
    (5, 0, "tty"), (5, 2, "ptmx"),
    (136, None, "pts: the container's own ptys, and /dev/console when it has a terminal"),
)  # fmt: skip

NAMESPACES = ("pid", "network", "ipc", "uts", "mount", "cgroup")


def build_config(spec: ContainerSpec, volumes: Sequence[VolumeMount] = ()) -> dict[str, Any]:
    """config.json for `spec` with `volumes` bound in it, as a dict ready for json.dumps."""
    _check(spec)
    _check_volumes(spec, volumes)
    linux: dict[str, Any] = {
        "namespaces": [{"type": ns} for ns in (*NAMESPACES, *(("user",) if spec.uid_maps else ()))],
        **_id_mappings(spec),
        "cgroupsPath": spec.cgroup,
        "resources": _resources(spec),
    }
    if not spec.privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
        linux["seccomp"] = default_profile(spec.arch)
    return {
        "ociVersion": OCI_VERSION,
        "process": _process(spec),
        "root": {"path": spec.rootfs, "readonly": False},
        "hostname": spec.hostname,
        "mounts": _mounts(spec) + [bind(volume) for volume in volumes],
        "linux": linux,
        # runc keeps these in its state: `runc state` tells which instance a container is.
        "annotations": {f"{ANNOTATION_PREFIX}.name": spec.name, f"{ANNOTATION_PREFIX}.uuid": spec.uuid},
    }


def _process(spec: ContainerSpec) -> dict[str, Any]:
    caps = list(_caps(spec))
    user: dict[str, Any] = {"uid": spec.uid, "gid": spec.gid}
    if spec.additional_gids:
        user["additionalGids"] = list(spec.additional_gids)
    soft, hard = spec.nofile
    return {
        "terminal": spec.terminal,
        "user": user,
        "args": list(spec.args),
        "env": _env(spec),
        "cwd": spec.cwd,
        # Inheritable and ambient stay empty: a program run by a non-root user gets no capability.
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
            "inheritable": [],
            "ambient": [],
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": hard, "soft": soft}],
        "noNewPrivileges": not spec.privileged,
    }


def _caps(spec: ContainerSpec) -> tuple[str, ...]:
    if spec.caps is not None:
        return spec.caps
    if spec.privileged:
        return ALL_CAPS
    if spec.nics and spec.uid_maps:
        # Its network namespace belongs to its user namespace: CAP_NET_ADMIN there configures its
        # own NICs (a DHCP client, `ip addr`) and nothing of the host's. What it may send is
        # enforced on the host side (virtkit's firewall), which it cannot reach.
        return (*DEFAULT_CAPS, "CAP_NET_ADMIN")
    return DEFAULT_CAPS


def _env(spec: ContainerSpec) -> list[str]:
    env = list(spec.env)
    names = {item.split("=", 1)[0] for item in env}
    # systemd and other inits read `container` to know they run in one (no udev, no hwclock ...).
    if spec.system and "container" not in names:
        env.append("container=virtkit")
    if spec.terminal and "TERM" not in names:
        env.append("TERM=xterm")
    return env


def _mounts(spec: ContainerSpec) -> list[dict[str, Any]]:
    ro = () if spec.privileged else ("ro",)
    # With a user namespace the tty group must exist inside, or the kernel refuses the mount.
    pts_gid = (f"gid={TTY_GID}",) if _gid_mapped(spec, TTY_GID) else ()
    mounts = [
        _mount("/proc", "proc", "nosuid", "noexec", "nodev"),
        _mount("/dev", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        _mount(
            "/dev/pts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", *pts_gid
        ),
        _mount("/dev/shm", "tmpfs", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k", source="shm"),
        _mount("/dev/mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        _mount("/sys", "sysfs", "nosuid", "noexec", "nodev", *ro),
        # Every container, not only system ones: runtimes (the JVM, Go, .NET) size their heaps
        # and thread pools from the limits they read here. In the cgroup namespace / is its own.
        _mount("/sys/fs/cgroup", "cgroup", "nosuid", "noexec", "nodev", "relatime", *ro),
    ]
    if spec.system:
        # An init cannot mount (no CAP_SYS_ADMIN, mount is not in the seccomp allowlist), and
        # systemd (252, Debian 12) mounts /run and /run/lock itself unless they are mount points
        # already, and stops at boot when it cannot ("Failed to mount tmpfs at /run/lock").
        # Their options are systemd's own. /tmp stays on the root filesystem, as in a Debian
        # install (tmp.mount is not enabled there). /run has no size: tmpfs pages are charged to
        # the container's memory cgroup.
        mounts.append(_mount("/run", "tmpfs", "nosuid", "nodev", "mode=755"))
        mounts.append(_mount("/run/lock", "tmpfs", "nosuid", "nodev", "noexec", "mode=1777", "size=5120k"))
    if spec.systemd_hierarchy and not spec.privileged:
        mounts.append(_systemd_cgroup(spec))
    return mounts


def _systemd_cgroup(spec: ContainerSpec) -> dict[str, Any]:
    """The container's own cgroup in cgroup v1's name=systemd hierarchy, writable, for systemd.

    That hierarchy has no controller, so writing there moves processes between cgroups but
    cannot raise a limit; its release_agent (run by the host kernel) is in the hierarchy's root,
    which stays outside. runc has made and joined this cgroup before it mounts anything.
    """
    source = spec.systemd_hierarchy.rstrip("/") + spec.cgroup
    return {
        "destination": "/sys/fs/cgroup/systemd",
        "type": "bind",
        "source": source,
        "options": ["rbind", "nosuid", "noexec", "nodev"],
    }


def _mount(destination: str, fstype: str, *options: str, source: str | None = None) -> dict[str, Any]:
    return {"destination": destination, "type": fstype, "source": source or fstype, "options": list(options)}


def _id_mappings(spec: ContainerSpec) -> dict[str, Any]:
    if not spec.uid_maps:
        return {}
    return {
        "uidMappings": [_idmap(m) for m in spec.uid_maps],
        "gidMappings": [_idmap(m) for m in spec.gid_maps or spec.uid_maps],
    }


def _idmap(m: IdMap) -> dict[str, int]:
    return {"containerID": m.container, "hostID": m.host, "size": m.size}


def _gid_mapped(spec: ContainerSpec, gid: int) -> bool:
    maps = spec.gid_maps or spec.uid_maps
    return not spec.uid_maps or any(m.container <= gid < m.container + m.size for m in maps)


def _uid_mapped(spec: ContainerSpec, uid: int) -> bool:
    return not spec.uid_maps or any(m.container <= uid < m.container + m.size for m in spec.uid_maps)


def _resources(spec: ContainerSpec) -> dict[str, Any]:
    """The cgroup limits: each only when the spec sets it (an absent key leaves runc's default)."""
    resources: dict[str, Any] = {"devices": _device_rules(spec)}
    cpu: dict[str, Any] = {}
    if spec.cpu_quota is not None:
        cpu.update(quota=spec.cpu_quota, period=spec.cpu_period)
    if spec.cpuset is not None:
        cpu["cpus"] = spec.cpuset
    if cpu:
        resources["cpu"] = cpu
    if spec.memory is not None:
        # OCI `swap` is memory plus swap (memory.memsw on v1): equal to the limit means no swap.
        swap = spec.memory_swap if spec.memory_swap is not None else spec.memory
        resources["memory"] = {"limit": spec.memory, "swap": swap}
    if spec.pids is not None:
        resources["pids"] = {"limit": spec.pids}
    if spec.io_weight is not None:
        resources["blockIO"] = {"weight": spec.io_weight}
    if spec.io_device:
        resources.setdefault("blockIO", {}).update(_throttles(spec))
    return resources


def _throttles(spec: ContainerSpec) -> dict[str, Any]:
    major, minor = (int(part) for part in spec.io_device.split(":"))
    throttles: dict[str, Any] = {}
    for kind, rate in (("Bps", spec.io_bps), ("IOPS", spec.io_iops)):
        if rate is not None:
            for way in ("Read", "Write"):
                throttles[f"throttle{way}{kind}Device"] = [{"major": major, "minor": minor, "rate": rate}]
    return throttles


def _device_rules(spec: ContainerSpec) -> list[dict[str, Any]]:
    if spec.privileged:
        return [{"allow": True, "access": "rwm"}]
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for major, minor, _what in DEVICES:
        rule: dict[str, Any] = {"allow": True, "type": "c", "major": major}
        if minor is not None:  # absent: any minor
            rule["minor"] = minor
        rule["access"] = "rwm"
        rules.append(rule)
    return rules


def _check_volumes(spec: ContainerSpec, volumes: Sequence[VolumeMount]) -> None:
    """Refuse volume mounts that could not be what they say (ops checked them when attaching)."""
    seen: set[str] = set()
    for volume in volumes:
        where = volume.destination
        if not (where.startswith("/") and volume.stage.startswith("/")) or where == "/" or where in seen:
            raise SpecError(f"container {spec.name}: volume {volume.name} cannot be mounted at {where!r}")
        if any(part in ("", ".", "..") for part in where[1:].split("/")):
            raise SpecError(f"container {spec.name}: volume {volume.name}'s path {where!r} is not plain")
        seen.add(where)


def _check(spec: ContainerSpec) -> None:
    """Refuse, with a message, what runc would refuse obscurely or do wrongly."""
    problems = []
    if not spec.args:
        problems.append("no command to run")
    if not spec.rootfs.startswith("/"):
        problems.append(f"the root filesystem {spec.rootfs!r} is not an absolute path")
    if not spec.cgroup.startswith("/"):
        # runc takes a relative cgroupsPath from its caller's own cgroup, in every hierarchy.
        problems.append(f"cgroup {spec.cgroup!r} is not an absolute path such as /virtkit/NAME")
    if spec.nofile[0] > spec.nofile[1]:
        problems.append(f"RLIMIT_NOFILE soft limit {spec.nofile[0]} is above its hard limit {spec.nofile[1]}")
    if spec.memory is None and spec.memory_swap is not None:
        problems.append("a swap limit without a memory limit")
    if spec.memory is not None and spec.memory_swap is not None and spec.memory_swap < spec.memory:
        problems.append("memory_swap (memory plus swap) is below the memory limit")
    if spec.io_device and not re.fullmatch(r"[0-9]+:[0-9]+", spec.io_device):
        problems.append(f"I/O device {spec.io_device!r} is not MAJOR:MINOR")
    if spec.io_weight is not None and not 10 <= spec.io_weight <= 1000:
        problems.append(f"I/O weight {spec.io_weight} is outside 10..1000")
    unknown = sorted(set(spec.caps or ()) - set(ALL_CAPS))
    if unknown:
        problems.append(f"unknown capabilities {', '.join(unknown)} (names are like CAP_NET_ADMIN)")
    if spec.systemd_hierarchy and not (spec.system and spec.systemd_hierarchy.startswith("/")):
        problems.append("systemd_hierarchy is an absolute host path, for system containers only")
    if spec.gid_maps and not spec.uid_maps:
        problems.append("gid mappings without uid mappings (a user namespace needs both)")
    if not _uid_mapped(spec, spec.uid) or not _gid_mapped(spec, spec.gid):
        problems.append(f"user {spec.uid}:{spec.gid} is not mapped in the container's user namespace")
    if problems:
        raise SpecError(f"container {spec.name}: {'; '.join(problems)}")
