"""The image store: images under ROOT/images/<fingerprint>/, content-addressed, recorded in the store.

A builder or importer fills a staging directory (ROOT/images/.staging/<id>/) and describes it with a
`StagedImage`; `commit` fingerprints the files (sha256 over a manifest of every file's role, type,
mode, owner and content), moves the directory into place and records it, all or nothing. A failed
build or import leaves nothing: the staging directory goes, the store is untouched.

Images are named by aliases (`tiny`, `debian-bookworm`) or by any unique prefix of their fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from virtkit.errors import ConflictError, NotFoundError, SpecError
from virtkit.images.staged import ROLES, StagedImage
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord
from virtkit.store import Store
from virtkit.units import validate_name

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
STAGING_DIR = ".staging"
_CHUNK = 1024 * 1024
_FINGERPRINT_HEX = frozenset("0123456789abcdef")


class ImageStore:
    """Images of one state root: their files under `root/images`, their records in `store`."""

    def __init__(self, root: Path, store: Store) -> None:
        self.dir = root / IMAGES_DIR
        self.store = store

    def path(self, record: ImageRecord) -> Path:
        """The directory holding an image's files."""
        return self.dir / record.fingerprint

    def file(self, record: ImageRecord, role: str) -> Path:
        """The file (or directory, for the rootfs) playing `role` in an image."""
        if role not in record.files:
            raise NotFoundError(f"image {_label(record)} has no {role}")
        return self.path(record) / record.files[role]

    # --- adding ------------------------------------------------------------------------------------

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh staging directory; removed on the way out unless `commit` moved it into place."""
        staging_root = self.dir / STAGING_DIR
        staging_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = staging_root / uuid.uuid4().hex
        path.mkdir(mode=0o755)
        try:
            yield path
        finally:
            if path.exists():
                _remove_tree(path)
            # A failed first import leaves the root as it found it; busy directories stay.
            for directory in (staging_root, self.dir):
                with contextlib.suppress(OSError):
                    directory.rmdir()

    def commit(self, staged: StagedImage, staging: Path, *, alias: str | None = None) -> ImageRecord:
        """Fingerprint the staged files, move them into place and record the image.

        `alias` (default: the staged name) names the image; if another image holds that alias it
        moves to this one, as a rebuild should. Committing content that is already stored only
        adds the alias.
        """
        alias = validate_name(alias or staged.name, what="image alias")
        _check_files(staged, staging)
        fingerprint = fingerprint_files(staging, staged.files)
        with self.store.lock("image", fingerprint):
            existing = self.store.find(ImageRecord, fingerprint)
            if existing is not None:
                with self.store.transaction():
                    return self._set_alias(existing, alias)
            record = self._record(staged, staging, fingerprint)
            target = self.dir / fingerprint
            if target.exists():  # left by a crash between rename and record: not ours to keep
                _remove_tree(target)
            os.rename(staging, target)
            try:
                with self.store.transaction():
                    return self._set_alias(self.store.create(record), alias)
            except BaseException:
                os.rename(target, staging)  # undo: the staging context removes it
                raise

    def _record(self, staged: StagedImage, staging: Path, fingerprint: str) -> ImageRecord:
        return ImageRecord(
            fingerprint=fingerprint,
            name=staged.name,
            kinds=[InstanceKind(kind) for kind in staged.kinds],
            arch=staged.arch,
            format=staged.format,
            size=disk_usage(staging),
            virtual_size=staged.virtual_size,
            source=staged.source,
            files=dict(staged.files),
            container=dict(staged.container),
            properties=dict(staged.properties),
        )

    # --- finding -----------------------------------------------------------------------------------

    def list(self) -> list[ImageRecord]:
        return sorted(self.store.list(ImageRecord), key=lambda r: (r.aliases[:1] or [r.name], r.created_at))

    def resolve(self, ref: str) -> ImageRecord:
        """The image with alias `ref`, or whose fingerprint starts with `ref`."""
        images = self.store.list(ImageRecord)
        for record in images:
            if ref in record.aliases:
                return record
        if len(ref) >= 4 and set(ref) <= _FINGERPRINT_HEX:
            matches = [r for r in images if r.fingerprint.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise SpecError(
                    f"image {ref!r} is ambiguous: {len(matches)} fingerprints start with it",
                    hint="give more characters of the fingerprint",
                )
        shown = ref if ref.isprintable() and len(ref) <= 255 else repr(ref[:80])
        hint = "`virtkit image list` shows the images"
        if "/" in ref or "." in ref:  # no alias has either: perhaps a file the user meant to boot
            with contextlib.suppress(OSError, ValueError):
                if Path(ref).is_file():
                    hint = f"a file is not an image: import it first (virtkit image import {shown})"
        raise NotFoundError(f"image {shown!r} not found", hint=hint)

    # --- changing ----------------------------------------------------------------------------------

    def alias_add(self, ref: str, alias: str) -> ImageRecord:
        """Give an image one more alias; refused if another image holds it."""
        alias = validate_name(alias, what="image alias")
        with self.store.transaction():
            record = self.resolve(ref)
            holder = self._holder(alias)
            if holder is not None and holder.fingerprint != record.fingerprint:
                raise ConflictError(
                    f"alias {alias!r} already names image {holder.fingerprint[:12]}",
                    hint=f"remove it first: virtkit image alias remove {alias}",
                )
            return self._set_alias(record, alias)

    def alias_remove(self, alias: str) -> ImageRecord:
        with self.store.transaction():
            holder = self._holder(alias)
            if holder is None:
                raise NotFoundError(f"image alias {alias!r} not found")
            holder.aliases = [a for a in holder.aliases if a != alias]
            return self.store.put(holder)

    def delete(self, ref: str) -> ImageRecord:
        """Delete an image, refused while instances use it."""
        record = self.resolve(ref)
        source = self.path(record)
        trash = self.dir / STAGING_DIR / f"deleting-{record.fingerprint}"
        trash.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.store.lock("image", record.fingerprint):
            # Files moved aside first and moved back if the record stays: an image is never
            # recorded without its files, and once the record is gone only the trash remains.
            moved = source.exists()
            if moved:
                os.rename(source, trash)
            try:
                with self.store.transaction():
                    self._refuse_if_used(record)
                    self.store.delete(ImageRecord, record.fingerprint)
            except BaseException:
                if moved:
                    os.rename(trash, source)
                raise
        if moved:
            _remove_tree(trash)
        return record

    def _refuse_if_used(self, record: ImageRecord) -> None:
        users = sorted(i.name for i in self.store.list(InstanceRecord) if i.image == record.fingerprint)
        if users:
            raise ConflictError(
                f"image {_label(record)} is used by instance{'s' if len(users) > 1 else ''} "
                f"{', '.join(users)}",
                hint="delete those instances first",
            )

    def _holder(self, alias: str) -> ImageRecord | None:
        return next((r for r in self.store.list(ImageRecord) if alias in r.aliases), None)

    def _set_alias(self, record: ImageRecord, alias: str) -> ImageRecord:
        holder = self._holder(alias)
        if holder is not None and holder.fingerprint != record.fingerprint:
            holder.aliases = [a for a in holder.aliases if a != alias]
            self.store.put(holder)
            log.info("alias %s moved from %s to %s", alias, holder.fingerprint[:12], record.fingerprint[:12])
        if alias not in record.aliases:
            record.aliases = [*record.aliases, alias]
            record = self.store.put(record)
        return record


def _label(record: ImageRecord) -> str:
    name = record.aliases[0] if record.aliases else record.name
    return f"{name!r} ({record.fingerprint[:12]})"


def _check_files(staged: StagedImage, staging: Path) -> None:
    if not staged.files:
        raise ValueError("a staged image needs at least one file")
    for role, relative in staged.files.items():
        if role not in ROLES:
            raise ValueError(f"unknown image file role {role!r}")
        path = staging / relative
        if Path(relative).is_absolute() or ".." in Path(relative).parts or not path.exists():
            raise ValueError(f"staged {role} {relative!r} is not a file inside the staging directory")


def fingerprint_files(base: Path, files: dict[str, str]) -> str:
    """sha256 over each role's name and content digest (a directory's digest covers its tree)."""
    digest = hashlib.sha256()
    for role in sorted(files):
        path = base / files[role]
        content = tree_digest(path) if path.is_dir() else file_digest(path)
        digest.update(f"{role}\0{files[role]}\0{content}\n".encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(top: Path) -> str:
    """sha256 over every entry of a tree: path, type, mode, owner, and content or link target."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath, name)
            info = path.lstat()
            relative = path.relative_to(top)
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = file_digest(path)
            else:
                content = ""
            digest.update(
                f"{relative}\0{info.st_mode:o}\0{info.st_uid}\0{info.st_gid}\0{content}\n".encode()
            )
    return digest.hexdigest()


def disk_usage(top: Path) -> int:
    """Bytes the files under `top` occupy on disk (sparse files count what is allocated)."""
    if not top.is_dir():
        return top.lstat().st_blocks * 512
    total = 0
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            total += Path(dirpath, name).lstat().st_blocks * 512
    return total


def _remove_tree(path: Path) -> None:
    def retry_writable(_func: object, failed: str, _exc: object) -> None:
        # A rootfs may hold read-only directories; as root this rarely matters, but be thorough.
        os.chmod(os.path.dirname(failed), 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            shutil.rmtree(failed, ignore_errors=True)
        else:
            os.unlink(failed)

    shutil.rmtree(path, onerror=retry_writable)
