"""What an unpacked root filesystem says about itself: its OS, its architecture, whether it can boot.

Every lookup goes through `virtkit.storage.rootpath`, so the tree's absolute symlinks
(``/etc/os-release -> ../usr/lib/os-release``) resolve inside it, never on the host.
"""

from __future__ import annotations

import platform
from pathlib import Path

from virtkit.storage import ExtractStats, read_in_root, resolve_in_root

# ELF e_machine -> architecture name (as `uname -m`); EM_PPC64 depends on the byte order.
_ELF_MACHINES = {
    0x03: "i686",
    0x28: "armv7l",
    0x3E: "x86_64",
    0xB7: "aarch64",
    0xF3: "riscv64",
    0x16: "s390x",
}
_EM_PPC64 = 0x15
_PROBES = ("bin/sh", "sbin/init", "bin/busybox", "usr/bin/env", "bin/ls")
_INITS = ("sbin/init", "bin/sh")
_HOST_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686", "i586": "i686"}


def host_arch() -> str:
    """This host's architecture, as `uname -m` names it (x86_64, aarch64, ...)."""
    machine = platform.machine()
    return _HOST_ALIASES.get(machine, machine)


def os_release(root: Path) -> dict[str, str]:
    """The KEY=value pairs of the tree's os-release (/etc, else /usr/lib), unquoted."""
    for path in ("etc/os-release", "usr/lib/os-release"):
        data = read_in_root(root, path, limit=64 * 1024)
        if data is not None:
            return _parse_os_release(data.decode("utf-8", errors="replace"))
    return {}


def _parse_os_release(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or not key.isidentifier():
            continue
        value = value.strip()
        quote = value[0] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else ""
        if quote:
            value = value[1:-1]
        if quote == '"':
            for escaped in ("\\\\", '\\"', "\\$", "\\`"):
                value = value.replace(escaped, escaped[1])
        if value.isprintable() and len(value) <= 200:
            values[key] = value
    return values


def binary_arch(root: Path) -> str | None:
    """The architecture of the tree's shell or init (read from its ELF header), if it has one."""
    for path in _PROBES:
        head = read_in_root(root, path, limit=20)
        if head is None or len(head) < 20 or not head.startswith(b"\x7fELF"):
            continue
        little = head[5] == 1
        machine = int.from_bytes(head[18:20], "little" if little else "big")
        if machine == _EM_PPC64:
            return "ppc64le" if little else "ppc64"
        if machine in _ELF_MACHINES:
            return _ELF_MACHINES[machine]
    return None


def has_init(root: Path) -> bool:
    """Whether the tree has something to run as PID 1 by default: /sbin/init or /bin/sh."""
    for path in _INITS:
        real = resolve_in_root(root, path)
        if real is not None and real.is_file():
            return True
    return False


def describe(root: Path) -> dict[str, str]:
    """Image properties a root filesystem gives: its OS from os-release, and a warning when it has
    nothing to run as a system container."""
    release = os_release(root)
    properties = {}
    for key, prop in (("NAME", "os.name"), ("VERSION", "os.version"), ("ID", "os.id")):
        if release.get(key):
            properties[prop] = release[key]
    if "os.version" not in properties and release.get("VERSION_ID"):
        properties["os.version"] = release["VERSION_ID"]
    if not has_init(root):
        properties["warning"] = "no /sbin/init nor /bin/sh: containers of this image need an explicit command"
    return properties


def extraction_notes(stats: ExtractStats, notes: dict[str, str] | None = None) -> dict[str, str]:
    """Properties recording what extraction left out or changed (only when it did)."""
    notes = dict(notes or {})
    for key, count in (
        ("skipped_devices", stats.skipped_devices),
        ("stripped_setuid", stats.stripped_setuid),
    ):
        if count:
            notes[key] = str(int(notes.get(key, "0")) + count)
    return notes
