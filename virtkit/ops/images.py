"""Image verbs: list, show, delete, aliases, export, build, import.

Builds and imports run inside a staging directory of the image store: whatever fails, nothing is
left behind, neither files nor records.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from virtkit.images.staged import Progress, StagedImage, no_progress
from virtkit.images.store import ImageStore
from virtkit.model import ImageRecord
from virtkit.store import Store


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
