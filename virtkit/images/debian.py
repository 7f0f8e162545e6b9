"""`virtkit image build debian`: a real Debian made by debootstrap, as a VM or a container image.

One debootstrapped tree per flavour (the VM's has a kernel, the container's none) is made once and
kept in the cache (`debiancache`), updated from <release>-updates and -security. Each build copies
it, configures the copy by writing files (`debiantree`) and packs it:

- VM: the kernel and initrd from /boot for direct boot, and a bootloader-free qcow2 root disk (a
  bare ext4 filesystem labelled virtkit-root, made by `mkfs.ext4 -d` without mounting anything);
- container: the configured tree itself, with systemd as /sbin/init (a system container).

Every argument is checked before any work starts: a bad release, package name, flavour or
architecture is a SpecError, a missing tool a HostCapabilityError naming its Debian package.
"""

from __future__ import annotations

import logging
import platform
import re
from collections.abc import Sequence
from pathlib import Path

from virtkit.errors import HostCapabilityError, SpecError
from virtkit.images import debiantree
from virtkit.images.chroot import chroot_session, run_in_chroot
from virtkit.images.debcache import DEBIAN_ARCH, DEBIAN_MIRROR, KEYRING, SECURITY_MIRROR
from virtkit.images.debiancache import cached_tree, debs_dir, tree_key
from virtkit.images.debiandisk import copy_tree, pack_vm, tree_size
from virtkit.images.debootstrap import DEBOOTSTRAP_TIMEOUT, debootstrap_argv, run_debootstrap
from virtkit.images.kernel import image_package
from virtkit.images.staged import ROOTFS, Progress, StagedImage, no_progress
from virtkit.images.tools import require_tool

log = logging.getLogger(__name__)

VM = debiantree.VM
CONTAINER = debiantree.CONTAINER
FLAVOURS = (VM, CONTAINER)
DEFAULT_RELEASE = "bookworm"
# Bump when the package set or the way a tree is made changes: cached trees are then rebuilt.
RECIPE = 2
# Releases deb.debian.org serves (older ones moved to archive.debian.org).
RELEASES = ("bullseye", "bookworm", "trixie", "forky", "sid")
SCRIPTS = Path("/usr/share/debootstrap/scripts")
_RELEASE_RE = re.compile(r"[a-z]+", re.ASCII)
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+", re.ASCII)

BASE_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "iproute2", "netbase", "ca-certificates", "procps",
    "sudo", "openssh-server", "qemu-guest-agent", "cloud-init",
    # debootstrap's resolver cannot satisfy the virtual python3-cffi-backend-api-* that
    # python3-cryptography (cloud-init) needs: name the package that provides them.
    "python3-cffi-backend",
)
VM_PACKAGES = ("initramfs-tools", "zstd")  # plus linux-image-<debian-arch>
APT_TIMEOUT = 1200.0
INIT = "/sbin/init"


def validate_release(release: str, scripts: Path = SCRIPTS) -> str:
    """`release` if it is a Debian codename virtkit builds and this debootstrap knows; else SpecError."""
    if not isinstance(release, str) or not _RELEASE_RE.fullmatch(release):
        raise SpecError(f"invalid Debian release {release!r}: expected a codename such as {DEFAULT_RELEASE}")
    if release in ("stable", "testing", "unstable", "oldstable", "oldoldstable"):
        raise SpecError(f"use a Debian codename, not {release!r}", hint=f"e.g. --release {DEFAULT_RELEASE}")
    if release not in RELEASES:
        raise SpecError(f"{release!r} is not a Debian release virtkit can build",
                        hint=f"use one of {', '.join(RELEASES)}")
    if not (scripts / release).exists():
        raise SpecError(f"this host's debootstrap does not know Debian {release}",
                        hint="upgrade debootstrap (apt-get install debootstrap) or use an older release")
    return release


def validate_packages(packages: Sequence[str]) -> list[str]:
    """The extra package names, checked against Debian policy's rule for names; else SpecError."""
    if isinstance(packages, str):
        raise SpecError("packages must be a list of names, not one string")
    checked = []
    for name in packages:
        if not isinstance(name, str) or not _PACKAGE_RE.fullmatch(name):
            raise SpecError(f"invalid Debian package name {name!r}",
                            hint="names are lowercase letters, digits and + - . (at least 2 characters)")
        checked.append(name)
    return sorted(set(checked))


def validate_arch(arch: str) -> str:
    """The Debian architecture for `arch`; foreign ones need qemu-user binfmt support on the host."""
    if arch not in DEBIAN_ARCH:
        raise SpecError(f"cannot build Debian images for architecture {arch!r}",
                        hint=f"use one of {', '.join(sorted(DEBIAN_ARCH))}")
    if arch != platform.machine() and not Path(f"/proc/sys/fs/binfmt_misc/qemu-{arch}").exists():
        raise HostCapabilityError(
            f"building an {arch} image on this {platform.machine()} host needs {arch} emulation for "
            "package scripts",
            hint="apt-get install qemu-user-static binfmt-support",
        )
    return DEBIAN_ARCH[arch]


def recipe_packages(release: str, debarch: str, flavour: str, extra: Sequence[str]) -> list[str]:
    """Everything debootstrap --include gets for this flavour (pure)."""
    packages = set(BASE_PACKAGES) | set(extra)
    if release != "bullseye":  # from bookworm on, systemd-resolved is a package of its own
        packages.add("systemd-resolved")
    if flavour == VM:
        packages |= {*VM_PACKAGES, f"linux-image-{debarch}"}
    return sorted(packages)


def build_debian(
    staging: Path,
    *,
    cache: Path,
    release: str = DEFAULT_RELEASE,
    packages: Sequence[str] = (),
    arch: str = "x86_64",
    flavour: str = VM,
    refresh: bool = False,
    progress: Progress = no_progress,
) -> StagedImage:
    """Build a Debian image of `flavour` ("vm" or "container") into `staging`.

    `packages` are added to the standard set. The debootstrapped tree comes from `cache` when a
    fresh one (< 7 days) exists; `refresh` rebuilds it. `virtkit image build debian` calls this
    once per flavour, each with its own staging directory.
    """
    if flavour not in FLAVOURS:
        raise SpecError(f"unknown Debian image flavour {flavour!r}", hint="use vm or container")
    validate_release(release)
    extra = validate_packages(packages)
    debarch = validate_arch(arch)
    tools = ["debootstrap", "chroot", "mount", "cp"] + (["mkfs.ext4", "qemu-img"] if flavour == VM else [])
    for tool in tools:
        require_tool(tool, {"chroot": "coreutils", "cp": "coreutils", "mount": "mount"}.get(tool))
    include = recipe_packages(release, debarch, flavour, extra)
    name = tree_key(recipe=RECIPE, release=release, debarch=debarch, packages=include)
    work = staging / (".tree" if flavour == VM else "rootfs")

    def make(tree: Path) -> None:
        make_tree(tree, cache=cache, release=release, debarch=debarch, include=include, progress=progress)

    info: dict[str, object] = {"release": release, "arch": debarch, "packages": include, "recipe": RECIPE}
    with cached_tree(cache, name, make, refresh=refresh, info=info) as (tree, hit):
        progress("using the cached Debian tree" if hit else "Debian tree built and cached", 1.0)
        progress("copying the Debian tree", None)
        copy_tree(tree, work)
    progress(f"configuring the {flavour} image", None)
    debiantree.configure_tree(work, flavour=flavour)
    base = {"os": "debian", "release": release, "packages": ",".join(extra), "cloud_init": "nocloud"}
    source = f"debootstrap {release} {DEBIAN_MIRROR}"
    if flavour == VM:
        return pack_vm(work, staging, arch=arch, release=release, source=source, properties=base,
                       progress=progress)
    return StagedImage(
        name=f"debian-{release}", kinds=["container"], arch=arch, format="debian", source=source,
        files={ROOTFS: "rootfs"}, virtual_size=tree_size(work),
        # No OCI config: a system container, systemd as PID 1 (plan.py), halted by SIGRTMIN+3,
        # ready once it prints the marker (debiantree.ready_unit).
        # cloud-init is off in the container (debiantree.cloud_init_disabled): no cloud_init.
        properties={**{k: v for k, v in base.items() if k != "cloud_init"}, "init": INIT,
                    "stop_signal": "SIGRTMIN+3", "ready_marker": debiantree.READY_MARKER},
    )


def make_tree(tree: Path, *, cache: Path, release: str, debarch: str, include: Sequence[str],
              progress: Progress) -> None:
    """debootstrap into `tree`, then install the release's updates and security fixes."""
    argv = debootstrap_argv(
        tree, release=release, debarch=debarch, mirror=DEBIAN_MIRROR, include=include,
        cache_dir=debs_dir(cache, debarch), keyring=KEYRING if KEYRING.is_file() else None,
    )
    run_debootstrap(argv, tree, progress=progress, timeout=DEBOOTSTRAP_TIMEOUT)
    (tree / "etc/apt/sources.list").unlink(missing_ok=True)
    sources = tree / "etc/apt/sources.list.d/debian.sources"
    sources.write_text(debiantree.apt_sources(release, DEBIAN_MIRROR, SECURITY_MIRROR))
    progress(f"installing updates from {release}-updates and {release}-security", None)
    with chroot_session(tree):
        run_in_chroot(tree, ["apt-get", "-q", "-o", "Acquire::Languages=none", "update"], timeout=APT_TIMEOUT,
                      what="updating package lists")
        # like debootstrap, no Recommends (a new kernel would bring AppArmor and firmware along)
        run_in_chroot(tree, ["apt-get", "-q", "-y", "-o", "APT::Install-Recommends=false",
                             "-o", "Dpkg::Options::=--force-confold", "dist-upgrade"],
                      timeout=APT_TIMEOUT, what=f"installing Debian {release} updates")
        stale = stale_kernels(tree, debarch)
        if stale:
            run_in_chroot(tree, ["apt-get", "-q", "-y", "purge", *stale], timeout=APT_TIMEOUT,
                          what="removing superseded kernels")
        run_in_chroot(tree, ["apt-get", "clean"], timeout=APT_TIMEOUT, what="cleaning the package cache")
    debiantree.clean_tree(tree)


def dpkg_status(text: str) -> dict[str, dict[str, str]]:
    """/var/lib/dpkg/status as package → fields, for installed packages only (pure)."""
    packages: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            packages[fields["Package"]] = fields
    return packages


def stale_kernels(tree: Path, debarch: str) -> list[str]:
    """Installed linux-image-<version> packages other than the one linux-image-<arch> depends on."""
    installed = dpkg_status((tree / "var/lib/dpkg/status").read_text())
    meta = installed.get(f"linux-image-{debarch}")
    if meta is None:
        return []
    current = image_package(meta.get("Depends", ""), debarch)
    return sorted(p for p in installed if re.fullmatch(r"linux-image-[0-9].*", p) and p != current)
