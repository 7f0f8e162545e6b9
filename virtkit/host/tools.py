"""External tools virtkit drives, with the Debian package that provides each and its version.

Each tool's version command runs with a 2 s timeout, all of them at once in threads, so the whole
host check stays well under a second. Lookup (`which`) and running (`run_version`) are parameters
so tests need no real tools.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from virtkit.host.checks import Check, JsonValue, Status

log = logging.getLogger(__name__)

VERSION_TIMEOUT = 2.0

Which = Callable[[str], str | None]
RunVersion = Callable[[list[str]], str]


@dataclass(frozen=True)
class Tool:
    name: str
    package: str
    purpose: str
    version_args: tuple[str, ...] = ("--version",)
    alternatives: tuple[str, ...] = ()  # when one of these is present, this one's absence is only INFO


TOOLS = (
    Tool("qemu-system-x86_64", "qemu-system-x86", "runs x86_64 VMs"),
    Tool("qemu-system-aarch64", "qemu-system-arm", "runs arm64 VMs"),
    Tool("qemu-img", "qemu-utils", "creates, converts and snapshots disk images"),
    Tool("runc", "runc", "runs containers (OCI runtime)", alternatives=("crun",)),
    Tool("crun", "crun", "runs containers (OCI runtime, lighter than runc)", alternatives=("runc",)),
    Tool("conmon", "conmon", "monitors each container, keeping its console and exit status"),
    Tool("nft", "nftables", "firewall and NAT for virtkit networks"),
    Tool("dnsmasq", "dnsmasq-base", "DHCP and DNS on virtkit networks"),
    Tool("ip", "iproute2", "bridges, veth and tap interfaces", version_args=("-V",)),
    Tool("debootstrap", "debootstrap", "builds Debian images"),
    Tool("skopeo", "skopeo", "fetches and copies OCI/Docker images"),
    Tool("umoci", "umoci", "unpacks OCI images into root filesystems"),
    Tool("xorriso", "xorriso", "writes the cloud-init seed ISO of VMs (--user-data, --ssh-key)"),
    Tool("zstd", "zstd", "compresses exports (virtkit export --compress zstd)", version_args=("-V",)),
)
OCI_RUNTIMES = ("runc", "crun")

# Other emulators reported when present (Debian ships them in these packages); absence is not news.
_QEMU_PACKAGES = {
    "i386": "qemu-system-x86",
    "x86_64-microvm": "qemu-system-x86",
    "arm": "qemu-system-arm",
    "ppc": "qemu-system-ppc",
    "ppc64": "qemu-system-ppc",
    "mips": "qemu-system-mips",
    "mipsel": "qemu-system-mips",
    "mips64": "qemu-system-mips",
    "mips64el": "qemu-system-mips",
    "s390x": "qemu-system-s390x",
    "sparc": "qemu-system-sparc",
    "sparc64": "qemu-system-sparc",
    "riscv32": "qemu-system-misc",
    "riscv64": "qemu-system-misc",
    "loongarch64": "qemu-system-misc",
    "alpha": "qemu-system-misc",
    "m68k": "qemu-system-misc",
    "hppa": "qemu-system-misc",
    "sh4": "qemu-system-misc",
    "microblaze": "qemu-system-misc",
    "xtensa": "qemu-system-misc",
}
EXTRA_QEMU = tuple(
    Tool(f"qemu-system-{target}", package, f"runs {target.replace('-', ' ')} VMs")
    for target, package in _QEMU_PACKAGES.items()
)

_ARCH_QEMU = {"i686": "i386", "i586": "i386", "ppc64le": "ppc64", "armv7l": "arm"}

# First dotted number: "QEMU emulator version 7.2.22", "nftables v1.0.6", "iproute2-6.1.0".
_VERSION_RE = re.compile(r"(?<![\w.])v?(\d+(?:\.\d+)+)")


def qemu_for_arch(arch: str) -> str:
    """The qemu-system binary that runs guests of the host's own architecture (the one KVM can use)."""
    return f"qemu-system-{_ARCH_QEMU.get(arch, arch)}"


def parse_version(text: str) -> str | None:
    for line in text.splitlines():
        match = _VERSION_RE.search(line)
        if match:
            return match.group(1)
    return None


def run_version_command(argv: list[str], timeout: float = VERSION_TIMEOUT) -> str:
    """Run a version command with a short timeout; stdout and stderr together (some tools use stderr)."""
    env = {**os.environ, "LC_ALL": "C"}
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
        check=False,
    )
    return done.stdout + done.stderr


@dataclass(frozen=True)
class ToolResult:
    tool: Tool
    path: str | None
    version: str | None = None
    error: str | None = None

    @property
    def found(self) -> bool:
        return self.path is not None


def _version_of(tool: Tool, path: str, run_version: RunVersion) -> ToolResult:
    try:
        output = run_version([path, *tool.version_args])
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.debug("%s %s failed: %s", path, " ".join(tool.version_args), exc)
        return ToolResult(tool, path, error=str(exc) or type(exc).__name__)
    return ToolResult(tool, path, parse_version(output))


def probe_tools(
    which: Which, run_version: RunVersion, tools: Iterable[Tool] | None = None
) -> list[ToolResult]:
    """Find every tool (TOOLS and any EXTRA_QEMU present) and read the versions concurrently."""
    wanted = list(tools) if tools is not None else [*TOOLS, *EXTRA_QEMU]
    located = [(tool, which(tool.name)) for tool in wanted]
    results: list[ToolResult] = []
    with ThreadPoolExecutor(max_workers=max(1, sum(1 for _, p in located if p))) as pool:
        futures = [
            (tool, pool.submit(_version_of, tool, path, run_version) if path else None)
            for tool, path in located
        ]
        for tool, future in futures:
            if future is not None:
                results.append(future.result())
            elif tool in TOOLS:  # absent extras are not reported at all
                results.append(ToolResult(tool, None))
    return results


def tool_checks(results: Iterable[ToolResult]) -> list[Check]:
    results = list(results)
    found = {r.tool.name for r in results if r.found}
    return [_tool_check(result, found) for result in results]


def _tool_check(result: ToolResult, found: set[str]) -> Check:
    tool = result.tool
    check_id = f"tools.{tool.name}"
    details: dict[str, JsonValue] = {
        "path": result.path,
        "version": result.version,
        "package": tool.package,
        "error": result.error,
    }
    install = f"apt-get install {tool.package}"
    if not result.found:
        present = [alt for alt in tool.alternatives if alt in found]
        if present:
            return Check(
                check_id,
                Status.INFO,
                f"{tool.name} not found; {present[0]} is used instead",
                remedy=install,
                details=details,
            )
        return Check(
            check_id,
            Status.WARN,
            f"{tool.name} not found (it {tool.purpose})",
            remedy=install,
            details=details,
        )
    if result.error is not None:
        return Check(
            check_id,
            Status.WARN,
            f"{tool.name} found at {result.path} but `{tool.name} {' '.join(tool.version_args)}` failed: "
            f"{result.error}",
            remedy=f"apt-get install --reinstall {tool.package}",
            details=details,
        )
    version = result.version or "(version unknown)"
    return Check(check_id, Status.PASS, f"{tool.name} {version}: {tool.purpose}", details=details)
