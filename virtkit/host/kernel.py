"""Kernel features containers stand on: namespaces, user namespaces, overlayfs; and the kernel's identity.

Namespaces are read from /proc/self/ns (one entry per kind the kernel was built with).
Unprivileged user namespaces are governed by up to three sysctls: user.max_user_namespaces
(0 disables user namespaces for everyone), Debian's kernel.unprivileged_userns_clone and Ubuntu's
kernel.apparmor_restrict_unprivileged_userns; absent sysctls mean the upstream default (allowed).
overlayfs may be a module not yet loaded: then /proc/filesystems lacks it, but mounting loads it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from virtkit.host.checks import Check, JsonValue, Status

NAMESPACES = ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup")
# Without these five no container can be isolated; user and cgroup only harden it.
CONTAINER_NAMESPACES = ("mnt", "uts", "ipc", "pid", "net")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def kernel_release(sysroot: Path) -> str:
    text = _read(sysroot / "proc/sys/kernel/osrelease")
    return text.strip() if text else platform.release()


def os_name(sysroot: Path) -> str:
    """PRETTY_NAME from os-release ("Debian GNU/Linux 12 (bookworm)"), or "Linux"."""
    for name in ("etc/os-release", "usr/lib/os-release"):
        for line in (_read(sysroot / name) or "").splitlines():
            key, _, value = line.partition("=")
            if key == "PRETTY_NAME":
                return value.strip().strip('"')
    return "Linux"


def probe_namespaces(sysroot: Path) -> frozenset[str]:
    ns = sysroot / "proc/self/ns"
    # In a real /proc these are symlinks to "net:[4026531833]", which does not resolve: test the link itself.
    return frozenset(name for name in NAMESPACES if (ns / name).is_symlink() or (ns / name).exists())


@dataclass(frozen=True)
class UsernsState:
    max_user_namespaces: int | None
    unprivileged_userns_clone: int | None
    apparmor_restrict: int | None


def probe_userns(sysroot: Path) -> UsernsState:
    sys = sysroot / "proc/sys"
    return UsernsState(
        _read_int(sys / "user/max_user_namespaces"),
        _read_int(sys / "kernel/unprivileged_userns_clone"),
        _read_int(sys / "kernel/apparmor_restrict_unprivileged_userns"),
    )


@dataclass(frozen=True)
class OverlayState:
    status: str  # "loaded", "module" (not loaded, will autoload), "absent" or "unknown"
    module: str | None = None

    @property
    def available(self) -> bool:
        return self.status in ("loaded", "module")


def probe_overlay(sysroot: Path, release: str) -> OverlayState:
    filesystems = _read(sysroot / "proc/filesystems") or ""
    if any(line.split()[-1:] == ["overlay"] for line in filesystems.splitlines()):
        return OverlayState("loaded")
    moddir = sysroot / "lib/modules" / release
    if not moddir.is_dir():
        return OverlayState("unknown")
    for index in ("modules.dep", "modules.builtin"):
        for line in (_read(moddir / index) or "").splitlines():
            path = line.split(":", 1)[0]
            if "/overlayfs/overlay.ko" in path:
                return OverlayState("module", str(moddir / path))
    return OverlayState("absent")


def namespaces_check(present: frozenset[str]) -> Check:
    missing = [name for name in NAMESPACES if name not in present]
    hard = [name for name in CONTAINER_NAMESPACES if name in missing]
    details: dict[str, JsonValue] = {"present": sorted(present), "missing": missing}
    if hard:
        return Check(
            "kernel.namespaces",
            Status.FAIL,
            f"missing namespaces {' '.join(hard)}: instances cannot be isolated",
            remedy="use a kernel built with CONFIG_NAMESPACES and the *_NS options (any distribution kernel)",
            required=True,
            details=details,
        )
    if missing:
        return Check(
            "kernel.namespaces",
            Status.WARN,
            f"missing namespaces {' '.join(missing)}: containers run less isolated",
            remedy="use a kernel built with CONFIG_USER_NS and CONFIG_CGROUPS (any distribution kernel)",
            required=True,
            details=details,
        )
    return Check(
        "kernel.namespaces",
        Status.PASS,
        "namespaces: " + " ".join(NAMESPACES),
        required=True,
        details=details,
    )


def userns_check(state: UsernsState, present: frozenset[str]) -> Check:
    details: dict[str, JsonValue] = {
        "max_user_namespaces": state.max_user_namespaces,
        "unprivileged_userns_clone": state.unprivileged_userns_clone,
        "apparmor_restrict_unprivileged_userns": state.apparmor_restrict,
    }
    if "user" not in present or state.max_user_namespaces == 0:
        return Check(
            "kernel.userns",
            Status.WARN,
            "user namespaces are disabled: containers cannot map root to an unprivileged user",
            remedy="sysctl -w user.max_user_namespaces=15000 (and persist it in /etc/sysctl.d/)",
            details=details,
        )
    if state.unprivileged_userns_clone == 0:
        return Check(
            "kernel.userns",
            Status.WARN,
            "only root may create user namespaces (kernel.unprivileged_userns_clone=0): "
            "rootless containers are unavailable",
            remedy="sysctl -w kernel.unprivileged_userns_clone=1 (and persist it in /etc/sysctl.d/)",
            details=details,
        )
    if state.apparmor_restrict == 1:
        return Check(
            "kernel.userns",
            Status.WARN,
            "AppArmor restricts unprivileged user namespaces: rootless containers need a profile",
            remedy="sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or run virtkit as root",
            details=details,
        )
    limit = f" (up to {state.max_user_namespaces})" if state.max_user_namespaces is not None else ""
    return Check(
        "kernel.userns", Status.PASS, f"unprivileged user namespaces allowed{limit}", details=details
    )


def overlay_check(state: OverlayState, release: str) -> Check:
    details: dict[str, JsonValue] = {"status": state.status, "module": state.module, "kernel": release}
    if state.status == "loaded":
        return Check(
            "kernel.overlayfs",
            Status.PASS,
            "overlayfs is available (copy-on-write root filesystems)",
            details=details,
        )
    if state.status == "module":
        return Check(
            "kernel.overlayfs",
            Status.WARN,
            "overlayfs is a module not loaded yet (mounting usually loads it)",
            remedy="modprobe overlay (and add 'overlay' to /etc/modules to load it at boot)",
            details=details,
        )
    if state.status == "unknown":
        return Check(
            "kernel.overlayfs",
            Status.WARN,
            f"overlayfs is not in /proc/filesystems and /lib/modules/{release} does not exist to tell "
            "whether it is a module",
            remedy="modprobe overlay; if that fails, install the kernel's modules package",
            details=details,
        )
    return Check(
        "kernel.overlayfs",
        Status.FAIL,
        "overlayfs is not available in this kernel: containers cannot get copy-on-write root filesystems",
        remedy="use a kernel built with CONFIG_OVERLAY_FS (any distribution kernel)",
        details=details,
    )
