"""The tiny image's root filesystem: a static busybox, a link per applet and the boot scripts.

The same tree is the container image (the OCI driver's read-only lower layer), the content of the
VM's ext4 root disk and the base of its initramfs. It holds no device nodes: containers get /dev
from their runtime, VMs from devtmpfs.
"""

from __future__ import annotations

import importlib
import logging
import platform
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import HostCapabilityError, RejectedError
from virtkit.images import elf
from virtkit.images.debcache import AptRoot, debian_arch, fetch_unpacked, prune
from virtkit.images.tinyinit import AGENT_PATH
from virtkit.images.tools import run_tool

log = logging.getLogger(__name__)

HOST_BUSYBOX = Path("/bin/busybox")
BUSYBOX_PACKAGE = "busybox-static"
LIST_TIMEOUT = 10.0

DIRECTORIES = {
    "bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "usr/lib/virtkit": 0o755,
    "etc/init.d": 0o755, "etc/acpi/PWRF": 0o755, "etc/udhcpc": 0o755, "dev": 0o755, "proc": 0o555,
    "sys": 0o555, "run": 0o755, "tmp": 0o1777, "root": 0o700, "var/log": 0o755, "mnt": 0o755,
    "home": 0o755,
}
LINKS = {"var/run": "../run", "var/tmp": "../tmp"}

_VERSION_RE = re.compile(rb"BusyBox v([0-9][0-9A-Za-z.+~-]*) \(([^)\n]{1,80})\)")


@dataclass(frozen=True)
class Busybox:
    """A static busybox binary for the guest's architecture."""

    path: Path
    version: str  # upstream version, 1.35.0
    build: str  # how it was built, "Debian 1:1.35.0-4+deb12u1+b1"


def find_busybox(cache: Path, arch: str) -> Busybox:
    """The host's static busybox for a native build, else Debian's busybox-static for `arch`."""
    if arch == platform.machine():
        if not HOST_BUSYBOX.is_file():
            raise HostCapabilityError(f"{HOST_BUSYBOX} is missing",
                                      hint=f"install it: apt-get install {BUSYBOX_PACKAGE}")
        path = HOST_BUSYBOX
    else:
        apt = AptRoot(cache, debian_arch(arch))
        apt.refresh()
        version = apt.show(BUSYBOX_PACKAGE)["Version"]
        root = fetch_unpacked(apt, BUSYBOX_PACKAGE, version)
        prune(cache, BUSYBOX_PACKAGE, apt.debarch, keep=root)
        path = root / "bin" / "busybox"
    return inspect_busybox(path, arch)


def inspect_busybox(path: Path, arch: str) -> Busybox:
    """Check that `path` is a static busybox for `arch` and read its version from the binary."""
    data = path.read_bytes()
    if elf.machine(data) != arch or not elf.is_static(data):
        raise HostCapabilityError(
            f"{path} is not a statically linked busybox for {arch}",
            hint=f"install Debian's {BUSYBOX_PACKAGE} (a dynamic busybox cannot run in an initramfs)",
        )
    match = _VERSION_RE.search(data)
    if match is None:
        raise RejectedError(f"{path} does not look like busybox (no version banner)")
    return Busybox(path, match.group(1).decode(), match.group(2).decode(errors="replace"))


def applet_paths() -> list[str]:
    """Where each busybox applet is installed ("bin/ls", "sbin/init", ...), from the host's busybox.

    The applet set comes from the build configuration, which Debian keeps the same across
    architectures, so the host binary answers for a foreign one too.
    """
    if not HOST_BUSYBOX.is_file():
        raise HostCapabilityError(f"{HOST_BUSYBOX} is missing", hint=f"apt-get install {BUSYBOX_PACKAGE}")
    done = run_tool([HOST_BUSYBOX, "--list-full"], timeout=LIST_TIMEOUT, what="listing busybox applets",
                    package=BUSYBOX_PACKAGE)
    paths = [line.strip() for line in done.stdout.splitlines()]
    return sorted(p for p in paths if "/" in p and ".." not in p and not p.startswith("/"))


def agent_script() -> str | None:
    """The in-guest command agent (module virtkit.images.tinyagent, AGENT), if virtkit has one."""
    try:
        module = importlib.import_module("virtkit.images.tinyagent")
    except ModuleNotFoundError:
        return None
    script = getattr(module, "AGENT", None)
    return script if isinstance(script, str) else None


def make_rootfs(
    dest: Path,
    *,
    busybox: Path,
    applets: Sequence[str],
    files: Mapping[str, tuple[str, int]],
    agent: str | None = None,
) -> int:
    """Create the root tree at `dest` (which must not exist). Returns the number of applet links."""
    dest.mkdir(mode=0o755)
    for name, mode in DIRECTORIES.items():
        path = dest / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    for name, target in LINKS.items():
        (dest / name).symlink_to(target)
    shutil.copyfile(busybox, dest / "bin" / "busybox")
    (dest / "bin" / "busybox").chmod(0o755)
    links = 0
    for applet in applets:
        link = dest / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
        links += 1
    all_files = dict(files)
    if agent is not None:
        all_files[AGENT_PATH.lstrip("/")] = (agent, 0o755)
    for name, (content, mode) in all_files.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
    return links
