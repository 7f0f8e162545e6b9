"""The guest kernel of built images: Debian's linux-image package, unpacked in the cache.

The concrete package (`linux-image-6.1.0-56-amd64`) is resolved from the `linux-image-<arch>`
metapackage, fetched and unpacked by `debcache` (never installed on the host). Before the unpacked
tree enters the cache, `depmod` writes its modules.dep (Debian generates it at install time, so
the package lacks it) and, for x86_64, the uncompressed kernel ELF is extracted from the bzImage:
under TCG a guest boots about twice as fast from it, skipping the kernel's self-decompression.

Module selection is pure (`parse_modules_dep`, `load_order`) so it is tested on fake indexes.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import re
import subprocess
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import RejectedError, ToolError
from virtkit.images import elf
from virtkit.images.debcache import AptRoot, debian_arch, fetch_unpacked, prune
from virtkit.images.staged import Progress, no_progress
from virtkit.images.tools import require_tool, run_tool

log = logging.getLogger(__name__)

DEPMOD_TIMEOUT = 120.0
ZSTD_TIMEOUT = 60.0
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"
_MODULE_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")


@dataclass(frozen=True)
class Kernel:
    """One unpacked Debian kernel package in the cache."""

    package: str  # linux-image-6.1.0-56-amd64
    version: str  # the package version, 6.1.192-2
    release: str  # what `uname -r` says in the guest, 6.1.0-56-amd64
    root: Path  # the unpacked package

    @property
    def vmlinuz(self) -> Path:
        """The bootable kernel as Debian ships it (a bzImage on x86_64, a compressed Image on arm64)."""
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def vmlinux(self) -> Path | None:
        """The uncompressed kernel ELF with a PVH note (x86_64 only), when it could be extracted."""
        path = self.root / "boot" / f"vmlinux-{self.release}"
        return path if path.is_file() else None

    @property
    def modules_dir(self) -> Path:
        return modules_dir(self.root, self.release)


def modules_dir(root: Path, release: str) -> Path:
    """The modules directory of an unpacked kernel package (/lib or, merged-/usr, /usr/lib)."""
    for base in ("lib", "usr/lib"):
        path = root / base / "modules" / release
        if path.is_dir():
            return path
    raise RejectedError(f"the kernel package has no modules directory for {release}")


def fetch_kernel(cache: Path, arch: str, *, progress: Progress = no_progress) -> Kernel:
    """The current Debian kernel for `arch`, from the cache or downloaded and unpacked into it."""
    debarch = debian_arch(arch)
    apt = AptRoot(cache, debarch)
    progress("resolving the Debian kernel package", None)
    apt.refresh()
    meta = apt.show(f"linux-image-{debarch}")
    package = image_package(meta.get("Depends", ""), debarch)
    version = apt.show(package)["Version"]
    release = package.removeprefix("linux-image-")
    progress(f"fetching {package} {version}", None)
    root = fetch_unpacked(apt, package, version, finish=lambda tree: prepare_tree(tree, release, arch))
    prune(cache, f"linux-image-*-{debarch}", debarch, keep=root)
    kernel = Kernel(package, version, release, root)
    if not kernel.vmlinuz.is_file():
        raise RejectedError(f"{package} {version} holds no kernel at /boot/vmlinuz-{release}")
    return kernel


def image_package(depends: str, debarch: str) -> str:
    """The concrete kernel package a `linux-image-<arch>` metapackage's Depends field names."""
    match = re.search(rf"\blinux-image-[0-9][^\s,(|]*-{re.escape(debarch)}\b", depends)
    if match is None:
        raise RejectedError(f"cannot find the kernel package in linux-image-{debarch}'s Depends: {depends!r}")
    return match.group(0)


def prepare_tree(root: Path, release: str, arch: str) -> None:
    """Make an unpacked kernel package ready to use: modules.dep, and the kernel ELF on x86_64."""
    depmod = require_tool("depmod", "kmod")
    modules_dir(root, release)  # fails early on a package without modules
    run_tool([depmod, "-b", root, release], timeout=DEPMOD_TIMEOUT,
             what=f"indexing the modules of kernel {release}")
    if arch == "x86_64":
        vmlinuz = root / "boot" / f"vmlinuz-{release}"
        image = extract_vmlinux(vmlinuz.read_bytes())
        if image is None:
            log.warning("no bootable kernel ELF found inside %s; only the bzImage will be used", vmlinuz.name)
        else:
            (root / "boot" / f"vmlinux-{release}").write_bytes(image)


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed x86 kernel ELF inside a bzImage, if it has a PVH note (else None).

    Like the kernel's scripts/extract-vmlinux: try each xz (then gzip) stream found in the image
    and keep the first that decompresses to an ELF file.
    """
    for magic in (_XZ_MAGIC, _GZIP_MAGIC):
        start = bzimage.find(magic)
        while start >= 0:
            image = _decompress_at(bzimage, start, magic)
            if image is not None and elf.machine(image) == "x86_64":
                return image if elf.has_pvh_note(image) else None
            start = bzimage.find(magic, start + 1)
    return None


def _decompress_at(data: bytes, start: int, magic: bytes) -> bytes | None:
    """The stream starting at `start` decompressed (trailing data ignored), or None if corrupt."""
    try:
        if magic == _XZ_MAGIC:
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
        return zlib.decompressobj(wbits=31).decompress(data[start:])  # 31: gzip framing
    except (lzma.LZMAError, zlib.error):
        return None


@dataclass(frozen=True)
class Module:
    """A kernel module as modules.dep describes it."""

    name: str  # canonical name: virtio_pci, crc32c_intel ('-' becomes '_', as the kernel does)
    path: str  # relative to the modules directory: kernel/drivers/virtio/virtio_pci.ko
    deps: tuple[str, ...]  # names of the modules it needs


def module_name(path: str) -> str:
    """The canonical name of a module file (kernel/crypto/crc32c-intel.ko.xz -> crc32c_intel)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, Module]:
    """modules.dep ("path: dep-path dep-path ...") as modules by name."""
    index: dict[str, Module] = {}
    for line in text.splitlines():
        path, sep, rest = line.partition(":")
        if not sep or not path.strip():
            continue
        deps = tuple(module_name(dep) for dep in rest.split())
        module = Module(module_name(path.strip()), path.strip(), deps)
        index.setdefault(module.name, module)
    return index


def parse_builtin(text: str) -> set[str]:
    """modules.builtin (one path per line) as a set of module names built into the kernel."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def load_order(
    index: dict[str, Module], builtin: set[str], required: Sequence[str], optional: Sequence[str] = ()
) -> list[Module]:
    """The modules to load, dependencies first: `required` (each must exist as a module or be built
    in) and `optional` (skipped when absent), with their dependency closure."""
    order: list[Module] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done or name in builtin:
            return
        if name in chain:
            raise RejectedError(f"modules.dep has a dependency cycle: {' -> '.join((*chain, name))}")
        module = index.get(name)
        if module is None:
            raise RejectedError(f"module {name} (needed by {chain[-1]}) is missing from modules.dep")
        for dep in module.deps:
            visit(dep, (*chain, name))
        done.add(name)
        order.append(module)

    for name in required:
        key = name.replace("-", "_")
        if key not in index and key not in builtin:
            raise RejectedError(f"the kernel has no module {name}", hint="is this a Debian kernel?")
        visit(key, ())
    for name in optional:
        key = name.replace("-", "_")
        if key in index:
            visit(key, ())
    return order


def closure(index: dict[str, Module], name: str) -> set[str]:
    """`name` and every module it needs, directly or not (names missing from `index` left out)."""
    found: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in found or current not in index:
            continue
        found.add(current)
        todo.extend(index[current].deps)
    return found


def load_conditions(
    index: dict[str, Module], roots: Mapping[str, Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """When to load each module pulled in by `roots` (module name -> the conditions under which the
    guest wants it; empty: always): always if any root needing it is unconditional, else when any
    of the conditions of the roots needing it holds."""
    merged: dict[str, list[str] | None] = {}  # None: always
    for root, conditions in roots.items():
        for name in sorted(closure(index, root.replace("-", "_"))):
            known = merged.get(name, [])
            if not conditions or known is None:
                merged[name] = None
            else:
                merged[name] = [*known, *(c for c in conditions if c not in known)]
    return {name: tuple(conds or ()) for name, conds in merged.items()}


def module_bytes(path: Path) -> bytes:
    """A module file's contents, decompressed (busybox insmod loads only plain .ko files)."""
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        zstd = require_tool("zstd")
        try:
            return subprocess.run([zstd, "-dc", str(path)], capture_output=True, check=True,
                                  timeout=ZSTD_TIMEOUT).stdout
        except (subprocess.SubprocessError, OSError) as exc:
            raise ToolError(f"cannot decompress the kernel module {path.name}: {exc}") from None
    return path.read_bytes()
