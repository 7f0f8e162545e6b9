"""Debian packages fetched with `apt-get download` and unpacked into virtkit's cache, never installed.

Builders need a few files out of Debian packages (a kernel and its modules, a static busybox for a
foreign architecture). They come from a private apt root in the cache (its own sources.list,
package lists and empty dpkg status), so the host's apt and dpkg configuration is neither used nor
changed, and any architecture can be fetched on any host.

Layout under the cache directory::

    apt/<debian-arch>/...                    the private apt root (lists refreshed once a day)
    debs/<package>_<version>_<arch>/         one unpacked package (dpkg-deb -x), complete or absent
    debs/.tmp-*                              work in progress; removed by the next fetch

A package is unpacked into a temporary directory and renamed into place only once complete, under
a lock, so the cache never holds a half-unpacked package.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from virtkit.errors import HostCapabilityError, NotFoundError, ToolError
from virtkit.images.tools import cache_lock, run_tool

log = logging.getLogger(__name__)

# virtkit architecture names (as `uname -m` says them) to Debian's.
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}

DEBIAN_MIRROR = os.environ.get("VIRTKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("VIRTKIT_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
RELEASE = "bookworm"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

LISTS_MAX_AGE = 24 * 3600  # package lists older than this are refreshed (kernels get security updates)
UPDATE_TIMEOUT = 180.0
QUERY_TIMEOUT = 60.0
DOWNLOAD_TIMEOUT = 600.0
UNPACK_TIMEOUT = 300.0
PRUNE_AGE = 3600.0

# Work done on a freshly unpacked package before it is renamed into the cache (depmod, extraction).
Finisher = Callable[[Path], None]


def debian_arch(arch: str) -> str:
    """Debian's name for a virtkit architecture; HostCapabilityError for ones virtkit cannot build."""
    try:
        return DEBIAN_ARCH[arch]
    except KeyError:
        known = ", ".join(sorted(DEBIAN_ARCH))
        message = f"cannot build images for architecture {arch!r}"
        raise HostCapabilityError(message, hint=f"use {known}") from None


def _safe(text: str) -> str:
    """A Debian version or package name made safe as a file name (epochs hold ':')."""
    return text.replace(":", "%3a").replace("/", "_")


class AptRoot:
    """A private apt configuration for one Debian architecture, living in the cache."""

    def __init__(self, cache: Path, debarch: str) -> None:
        self.debarch = debarch
        self.cache = cache
        self.dir = cache / "apt" / debarch
        self.lists = self.dir / "state" / "lists"

    def options(self) -> list[str]:
        d = self.dir
        settings = {
            "Dir::Etc::SourceList": d / "sources.list",
            "Dir::Etc::SourceParts": d / "sources.list.d",
            "Dir::Etc::Preferences": d / "preferences",
            "Dir::Etc::PreferencesParts": d / "preferences.d",
            "Dir::State": d / "state",
            "Dir::State::status": d / "state" / "status",
            "Dir::Cache": d / "cache",
            "APT::Architecture": self.debarch,
            "APT::Architectures": self.debarch,
            "Acquire::Languages": "none",
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
        }
        args: list[str] = []
        for key, value in settings.items():
            if value != "":
                args += ["-o", f"{key}={value}"]
        return args

    def prepare(self) -> None:
        """Write the private sources.list and empty dpkg status (idempotent)."""
        if not KEYRING.is_file():
            raise HostCapabilityError(
                f"the Debian archive keyring {KEYRING} is missing",
                hint="install it: apt-get install debian-archive-keyring",
            )
        for sub in ("sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        status = self.dir / "state" / "status"
        if not status.exists():
            status.touch()
        signed = f"[signed-by={KEYRING}]"
        sources = (
            f"deb {signed} {DEBIAN_MIRROR} {RELEASE} main\n"
            f"deb {signed} {DEBIAN_MIRROR} {RELEASE}-updates main\n"
            f"deb {signed} {SECURITY_MIRROR} {RELEASE}-security main\n"
        )
        path = self.dir / "sources.list"
        if not path.exists() or path.read_text() != sources:
            path.write_text(sources)
            for old in self.lists.glob("*_Packages*"):  # lists of another mirror are stale
                old.unlink()

    def _lists_age(self) -> float | None:
        stamps = [p.stat().st_mtime for p in self.lists.glob("*_Packages*")]
        return time.time() - min(stamps) if stamps else None

    def refresh(self) -> None:
        """Fetch the package lists when missing or older than a day; keep old ones when offline."""
        self.prepare()
        with cache_lock(self.cache, f"apt-{self.debarch}"):
            self._refresh()

    def _refresh(self) -> None:
        age = self._lists_age()
        if age is not None and age < LISTS_MAX_AGE:
            return
        try:
            run_tool(["apt-get", *self.options(), "-q", "update"], timeout=UPDATE_TIMEOUT,
                     what=f"fetching the Debian {RELEASE} package lists for {self.debarch}")
        except ToolError:
            if age is None:
                raise
            log.warning("cannot refresh the Debian package lists; using ones %.0f h old", age / 3600)
            return
        for listing in self.lists.glob("*_Packages*"):
            os.utime(listing)  # apt keeps the server's date; the age that matters is our last check

    def show(self, package: str) -> dict[str, str]:
        """The candidate version's control fields of `package` (Version, Depends, Filename...)."""
        done = run_tool(["apt-cache", *self.options(), "show", "--no-all-versions", package],
                        timeout=QUERY_TIMEOUT, what=f"looking up the Debian package {package}")
        fields: dict[str, str] = {}
        for line in done.stdout.splitlines():
            if not line.strip():
                break
            if line[0].isspace() or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if "Version" not in fields:
            raise NotFoundError(f"Debian {RELEASE} has no package {package} for {self.debarch}")
        return fields


def unpacked_path(cache: Path, package: str, version: str, debarch: str) -> Path:
    """Where package `package` at `version` is (or would be) unpacked in the cache."""
    return cache / "debs" / f"{_safe(package)}_{_safe(version)}_{debarch}"


def cached_versions(cache: Path, package: str, debarch: str) -> list[Path]:
    """Unpacked copies of `package` (a name or a glob) in the cache, newest first."""
    found = (cache / "debs").glob(f"{_safe(package)}_*_{debarch}")
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def prune(cache: Path, package_glob: str, debarch: str, *, keep: Path, min_age: float = PRUNE_AGE) -> None:
    """Remove unpacked packages matching `package_glob` other than `keep` (superseded versions,
    e.g. the previous kernel after a security update). Ones younger than `min_age` seconds stay:
    a build running right now may still be reading them."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache, "debs"):
        for old in cached_versions(cache, package_glob, debarch):
            if old == keep or time.time() - old.stat().st_mtime < min_age:
                continue
            log.info("removing %s from the cache (superseded by %s)", old.name, keep.name)
            doomed = Path(tempfile.mkdtemp(prefix=".tmp-", dir=debs))
            old.rename(doomed / "old")  # gone at once; the files go below, or with the next fetch
            shutil.rmtree(doomed, ignore_errors=True)


def fetch_unpacked(
    apt: AptRoot, package: str, version: str, *, finish: Finisher | None = None
) -> Path:
    """The directory holding `package`=`version` unpacked, downloading and unpacking it if needed.

    `finish` runs on the unpacked tree before it is renamed into the cache, so its work is cached
    too and a failure in it leaves nothing behind.
    """
    cache = apt.cache
    final = unpacked_path(cache, package, version, apt.debarch)
    if final.is_dir():
        return final
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache, "debs"):
        if final.is_dir():  # another build fetched it while we waited
            return final
        for stale in debs.glob(".tmp-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=debs))
        try:
            _download_and_unpack(apt, package, version, work, finish)
            (work / "root").rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def _download_and_unpack(
    apt: AptRoot, package: str, version: str, work: Path, finish: Finisher | None
) -> None:
    started = time.monotonic()
    run_tool(["apt-get", *apt.options(), "-q", "download", f"{package}={version}"], cwd=work,
             timeout=DOWNLOAD_TIMEOUT, what=f"downloading the Debian package {package} {version}")
    debs = list(work.glob("*.deb"))
    if len(debs) != 1:
        raise ToolError(f"apt-get download of {package} {version} left {len(debs)} .deb files")
    log.info("downloaded %s %s in %.1f s", package, version, time.monotonic() - started)
    root = work / "root"
    run_tool(["dpkg-deb", "-x", debs[0], root], timeout=UNPACK_TIMEOUT,
             what=f"unpacking the Debian package {package} {version}")
    debs[0].unlink()
    if finish is not None:
        finish(root)
