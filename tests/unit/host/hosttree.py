"""Fake host trees for virtkit.host tests: a /proc, /sys, /dev and /lib/modules laid out in a directory.

`build_tree(root, ...)` builds one (the `make_tree` fixture wraps it); `run_tree(root, ...)` runs
`run_checks` on it with fake tools and a fake KVM ioctl prober, so no test depends on what this
machine has installed.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from virtkit.host import KvmIoctlResult, Report, run_checks

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "host"
CPUINFO = FIXTURES / "cpuinfo"

MakeTree = Callable[..., Path]  # the make_tree fixture

ALL_NAMESPACES = ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup")
V1_CONTROLLERS = ("cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "pids")
V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")

# Real outputs of each tool's version command (Debian 12).
TOOL_OUTPUTS = {
    "qemu-system-x86_64": "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"
    "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n",
    "qemu-system-aarch64": "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n",
    "qemu-img": "qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n",
    "runc": "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n",
    "crun": "crun version 1.8.1\ncommit: f8a096be060b22ccd3d5f3ebe44108517fbf6c30\nrundir: /run/crun\n",
    "conmon": "conmon version 2.1.6\ncommit: unknown\n",
    "nft": "nftables v1.0.6 (Lester Gooch #5)\n",
    "dnsmasq": "Dnsmasq version 2.90  Copyright (c) 2000-2024 Simon Kelley\n",
    "ip": "ip utility, iproute2-6.1.0, libbpf 1.1.2\n",
    "debootstrap": "debootstrap 1.0.128+nmu2+deb12u2\n",
    "skopeo": "skopeo version 1.9.3\n",
    "umoci": "umoci version 0.4.7+ds-3+b7\n",
    "xorriso": "xorriso 1.5.4 : RockRidge filesystem manipulator, libburnia project.\n",
    "zstd": "*** Zstandard CLI (64-bit) v1.5.4, by Yann Collet ***\n",
}
ALL_TOOLS = tuple(TOOL_OUTPUTS)


def cpuinfo_text(name: str) -> str:
    return (CPUINFO / f"{name}.txt").read_text()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _mounts(cgroup: str, controllers: Iterable[str]) -> str:
    lines = [
        "/dev/vda / ext4 rw,relatime 0 0",
        "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0",
        "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0",
    ]
    if cgroup == "v2":
        lines.append("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0")
    elif cgroup in ("v1", "hybrid"):
        lines.append("tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0")
        lines += [
            f"cgroup /sys/fs/cgroup/{c} cgroup rw,nosuid,nodev,noexec,relatime,{c} 0 0" for c in controllers
        ]
        if cgroup == "hybrid":
            lines.append("cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0")
    return "\n".join(lines) + "\n"


def _proc_cgroups(cgroup: str, controllers: Iterable[str]) -> str:
    on_v1 = cgroup in ("v1", "hybrid")
    rows = ["#subsys_name\thierarchy\tnum_cgroups\tenabled"]
    rows += [f"{c}\t{i + 1 if on_v1 else 0}\t1\t1" for i, c in enumerate(controllers)]
    return "\n".join(rows) + "\n"


def _cgroup_tree(root: Path, cgroup: str, controllers: tuple[str, ...] | None) -> None:
    if cgroup == "v2":
        names = V2_CONTROLLERS if controllers is None else controllers
        base = root / "sys/fs/cgroup"
        _write(base / "cgroup.controllers", " ".join(names) + "\n")
        _write(base / "cpu.stat", "usage_usec 1\n")
        _write(base / "init.scope/cgroup.freeze", "0\n")
    else:
        names = V1_CONTROLLERS if controllers is None else controllers
        if cgroup == "hybrid":
            _write(root / "sys/fs/cgroup/unified/cgroup.controllers", "\n")
    _write(root / "proc/self/mounts", _mounts(cgroup, names))
    _write(root / "proc/cgroups", _proc_cgroups(cgroup, names))


def _overlay(root: Path, overlay: str, release: str) -> None:
    _write(
        root / "proc/filesystems",
        "nodev\tsysfs\nnodev\tproc\nnodev\tcgroup2\n\text4\n"
        + ("nodev\toverlay\n" if overlay == "loaded" else ""),
    )
    moddir = root / "lib/modules" / release
    if overlay == "module":
        _write(moddir / "modules.dep", "kernel/fs/overlayfs/overlay.ko.xz:\nkernel/net/tun.ko.xz:\n")
    elif overlay == "absent":
        _write(moddir / "modules.dep", "kernel/net/tun.ko.xz:\n")


def build_tree(
    root: Path,
    *,
    cpuinfo: str | None = "intel-vtx-ept",
    cgroup: str = "v2",
    controllers: tuple[str, ...] | None = None,
    kvm: bool = True,
    kvm_modules: tuple[str, ...] = ("kvm", "kvm_intel"),
    nested: str | None = "Y",
    tun: bool = True,
    vhost_net: bool = True,
    iommu: str = "none",
    namespaces: tuple[str, ...] = ALL_NAMESPACES,
    max_user_namespaces: int | None = 15000,
    unprivileged_userns_clone: int | None = None,
    overlay: str = "loaded",
    release: str = "6.1.0-13-amd64",
    dmi: str | None = None,
) -> Path:
    """A host under `root`. `cpuinfo` is a fixture name (tests/fixtures/host/cpuinfo/NAME.txt),
    literal text (when it contains "processor"), or None for no /proc/cpuinfo at all."""
    if cpuinfo is not None:
        _write(root / "proc/cpuinfo", cpuinfo if "processor" in cpuinfo else cpuinfo_text(cpuinfo))
    _write(root / "proc/sys/kernel/osrelease", release + "\n")
    _write(root / "etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    _cgroup_tree(root, cgroup, controllers)
    (root / "proc/self/ns").mkdir(parents=True, exist_ok=True)
    for ns in namespaces:
        (root / "proc/self/ns" / ns).symlink_to(f"{ns}:[4026531835]")  # dangling, as in real /proc
    if max_user_namespaces is not None:
        _write(root / "proc/sys/user/max_user_namespaces", f"{max_user_namespaces}\n")
    if unprivileged_userns_clone is not None:
        _write(root / "proc/sys/kernel/unprivileged_userns_clone", f"{unprivileged_userns_clone}\n")
    _overlay(root, overlay, release)
    (root / "dev").mkdir(exist_ok=True)
    if kvm:
        _write(root / "dev/kvm", "")
    for module in kvm_modules:
        (root / "sys/module" / module).mkdir(parents=True, exist_ok=True)
    if nested is not None:
        for module in kvm_modules:
            if module in ("kvm_intel", "kvm_amd"):
                _write(root / "sys/module" / module / "parameters/nested", nested + "\n")
    if tun:
        _write(root / "dev/net/tun", "")
    if vhost_net:
        _write(root / "dev/vhost-net", "")
    tables = root / "sys/firmware/acpi/tables"
    tables.mkdir(parents=True, exist_ok=True)
    _write(tables / "APIC", "")
    if iommu in ("tables", "groups"):
        _write(tables / "DMAR", "")
    if iommu == "groups":
        for group in range(3):
            (root / "sys/kernel/iommu_groups" / str(group)).mkdir(parents=True)
    if dmi is not None:
        _write(root / "sys/class/dmi/id/sys_vendor", dmi + "\n")
    return root


def fake_which(present: Iterable[str]) -> Callable[[str], str | None]:
    names = set(present)
    return lambda name: f"/usr/bin/{name}" if name in names else None


def fake_run_version(argv: list[str]) -> str:
    return TOOL_OUTPUTS.get(Path(argv[0]).name, "QEMU emulator version 7.2.22\n")


def ioctl_ok(_path: Path) -> KvmIoctlResult:
    return KvmIoctlResult(api_version=12)


def ioctl_denied(_path: Path) -> KvmIoctlResult:
    return KvmIoctlResult("open", errno=errno.EACCES, error="Permission denied")


def run_tree(root: Path, *, tools: Iterable[str] = ALL_TOOLS, arch: str = "x86_64", **kwargs: Any) -> Report:
    """run_checks on a fake tree with fake tools (`tools` present) and a working KVM ioctl by default."""
    kwargs.setdefault("kvm_ioctl", ioctl_ok)
    kwargs.setdefault("state_root", root / "var/lib/virtkit")
    return run_checks(
        sysroot=root,
        arch=arch,
        system=kwargs.pop("system", "Linux"),
        which=kwargs.pop("which", fake_which(tools)),
        run_version=kwargs.pop("run_version", fake_run_version),
        **kwargs,
    )
