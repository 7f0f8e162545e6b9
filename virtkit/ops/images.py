"""Image verbs: list, show, delete, aliases, export, build, import.

Builds and imports run inside a staging directory of the image store: whatever fails, nothing is
left behind, neither files nor records.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from virtkit.errors import ConflictError
from virtkit.images.staged import Progress, StagedImage, no_progress
from virtkit.images.store import ImageStore
from virtkit.model import ImageRecord, InstanceRecord
from virtkit.store import Store
from virtkit.units import validate_name


def cache_dir() -> Path:
    """Where downloads and build intermediates are cached: $VIRTKIT_CACHE or ~/.cache/virtkit."""
    configured = os.environ.get("VIRTKIT_CACHE")
    path = Path(configured) if configured else Path.home() / ".cache" / "virtkit"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def image_store(root: Path, store: Store) -> ImageStore:
    return ImageStore(root, store)


def list_images(root: Path, store: Store) -> list[ImageRecord]:
    return image_store(root, store).list()


def get_image(root: Path, store: Store, ref: str) -> ImageRecord:
    return image_store(root, store).resolve(ref)


def delete_image(root: Path, store: Store, ref: str) -> ImageRecord:
    return image_store(root, store).delete(ref)


def add_alias(root: Path, store: Store, ref: str, alias: str) -> ImageRecord:
    return image_store(root, store).alias_add(ref, alias)


def remove_alias(root: Path, store: Store, alias: str) -> ImageRecord:
    return image_store(root, store).alias_remove(alias)


def export(root: Path, store: Store, ref: str, dest: Path, progress: Progress = no_progress) -> Path:
    from virtkit.images.export import export_image

    images = image_store(root, store)
    return export_image(images, images.resolve(ref), dest, progress=progress)


def add_staged(
    root: Path,
    store: Store,
    make: Callable[[Path], StagedImage],
    *,
    alias: str | None = None,
) -> ImageRecord:
    """Run a builder or importer (`make` fills the staging directory) and commit its image."""
    images = image_store(root, store)
    with images.staging() as staging:
        staged = make(staging)
        return images.commit(staged, staging, alias=alias)


def default_alias(source: Path) -> str:
    """An alias made from a file name: "Ubuntu_22.04.qcow2" → "ubuntu-22-04"."""
    stem = source.name.split(".")[0] if not source.is_dir() else source.name
    alias = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:63].rstrip("-")
    if not alias or not alias[0].isalpha():
        alias = f"image-{alias}"[:63].rstrip("-")
    return alias


def import_image(
    root: Path,
    store: Store,
    source: Path,
    *,
    name: str | None = None,
    fmt: str | None = None,
    progress: Progress = no_progress,
) -> ImageRecord:
    """Import a disk image, ISO, rootfs tarball, OCI layout or archive, docker save archive, or
    virtkit image archive; the format is told by the file's bytes, checked against its name."""
    from virtkit.images.detect import detect

    alias = validate_name(name, what="image name") if name else default_alias(source)
    holder = next((r for r in image_store(root, store).list() if alias in r.aliases), None)
    if holder is not None:
        raise ConflictError(
            f"image alias {alias!r} already names image {holder.fingerprint[:12]}",
            hint="choose another with --name, or delete that image first",
        )
    if source.is_dir():
        kind, detected_format = "oci-layout", None
    else:
        detected = detect(source, fmt)
        kind, detected_format = detected.kind, detected.format
    return add_staged(
        root,
        store,
        lambda staging: _importer(source, staging, alias, kind, detected_format, progress),
        alias=alias,
    )


def _importer(
    source: Path, staging: Path, alias: str, kind: str, fmt: str | None, progress: Progress
) -> StagedImage:
    if kind == "disk":
        from virtkit.images.disk import import_disk

        return import_disk(source, staging, name=alias, fmt=fmt, progress=progress)
    if kind == "iso":
        from virtkit.images.iso import import_iso

        return import_iso(source, staging, name=alias, progress=progress)
    from virtkit.images.bundle import import_bundle, is_bundle
    from virtkit.images.oci import import_oci, is_image_archive

    if kind != "oci-layout" and is_bundle(source):
        return import_bundle(source, staging, name=alias, progress=progress)
    if kind == "oci-layout" or is_image_archive(source):
        return import_oci(source, staging, name=alias, progress=progress)
    from virtkit.images.rootfs import import_rootfs

    return import_rootfs(source, staging, name=alias, progress=progress)


ARCHES = ("x86_64", "aarch64")


def tiny_alias(arch: str) -> str:
    return "tiny" if arch == "x86_64" else f"tiny-{arch}"


def debian_alias(release: str, flavour: str, arch: str) -> str:
    """`debian-bookworm` (VM), `debian-bookworm-container`; `-aarch64` appended for arm64."""
    alias = f"debian-{release}" + ("-container" if flavour == "container" else "")
    return alias if arch == "x86_64" else f"{alias}-{arch}"


def rebuild(
    root: Path, store: Store, make: Callable[[Path], StagedImage], *, alias: str
) -> ImageRecord:
    """Build an image that replaces the one named `alias`: the alias moves to the new image, and
    the old one is deleted when nothing else names or uses it (as a rebuild should, not leaving
    nameless images behind)."""
    images = image_store(root, store)
    previous = next((r for r in images.list() if alias in r.aliases), None)
    record = add_staged(root, store, make, alias=alias)
    if previous is not None and previous.fingerprint != record.fingerprint:
        old = store.find(ImageRecord, previous.fingerprint)
        in_use = any(i.image == previous.fingerprint for i in store.list(InstanceRecord))
        if old is not None and not old.aliases and not in_use:
            images.delete(old.fingerprint)
    return record


def build_tiny_image(
    root: Path, store: Store, *, arch: str = "x86_64", progress: Progress = no_progress
) -> ImageRecord:
    """Build the tiny busybox guest (VM and container) from Debian's kernel and busybox-static."""
    from virtkit.images.tiny import build_tiny

    cache = cache_dir()
    return rebuild(
        root,
        store,
        lambda staging: build_tiny(staging, cache=cache, arch=arch, progress=progress),
        alias=tiny_alias(arch),
    )


def build_debian_images(
    root: Path,
    store: Store,
    *,
    release: str,
    packages: list[str],
    arch: str = "x86_64",
    flavours: tuple[str, ...] = ("vm", "container"),
    refresh: bool = False,
    progress: Progress = no_progress,
) -> list[ImageRecord]:
    """Build Debian by debootstrap: a VM image (kernel, initrd, disk) and a container image."""
    from virtkit.images.debian import build_debian

    cache = cache_dir()
    records = []
    for flavour in flavours:

        def make(staging: Path, flavour: str = flavour) -> StagedImage:
            return build_debian(
                staging,
                cache=cache,
                release=release,
                packages=packages,
                arch=arch,
                flavour=flavour,
                refresh=refresh,  # each flavour has its own cached tree
                progress=progress,
            )

        records.append(rebuild(root, store, make, alias=debian_alias(release, flavour, arch)))
    return records
