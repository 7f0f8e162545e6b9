"""`virtkit export` and `virtkit import` through a remote: the archive is a file of the client's
host, downloaded from or uploaded to the server as it streams (api/streams.py), never whole in
memory. `RemoteBackups` answers as ops.backup.Backups: the Exported's manifest is read back from
the downloaded archive (its first member), the Imported rebuilt from the import operation's result.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.errors import ConflictError, NotFoundError, RejectedError, StoreError

if TYPE_CHECKING:
    from virtkit.api.streams import Streams
    from virtkit.ops.backup import Exported, Imported
    from virtkit.storage.backupformat import Manifest


class _Read(Exception):
    """Raised from the manifest check to stop reading an archive once its manifest is known."""


def manifest_of(archive: Path) -> Manifest:
    """The manifest of a backup archive (checked as an import checks it), without reading the rest."""
    from virtkit.storage.backupread import read

    found: list[Manifest] = []

    def keep(manifest: Manifest) -> None:
        found.append(manifest)
        raise _Read

    with tempfile.TemporaryDirectory(prefix="vk-manifest-") as staging, contextlib.suppress(_Read):
        read(archive, Path(staging), check=keep)
    if not found:
        raise RejectedError(f"{archive.name} holds no manifest")
    return found[0]


class RemoteBackups:
    """`ops.backup.Backups` through a server's API, with the archive on this host."""

    def __init__(self, streams: Streams) -> None:
        self.streams = streams

    def export(self, name: str, dest: Path, *, compression: str = "zstd", instance_only: bool = False,
               since: str | None = None) -> Exported:  # fmt: skip
        """Download instance `name`'s archive to `dest` (refused if it exists, as locally): into a
        partial file beside it, renamed into place once complete."""
        from virtkit.ops.backup import Exported
        from virtkit.store.files import temp_name

        dest = Path(os.path.abspath(dest))
        if os.path.lexists(dest):
            raise ConflictError(f"{dest} already exists", hint="choose another file name or remove it")
        if not dest.parent.is_dir():
            raise StoreError(f"cannot write {dest}: {dest.parent} is not a directory")
        partial = dest.with_name(temp_name(dest.name))
        try:
            size = self.streams.export(name, partial, compress=compression, instance_only=instance_only,
                                       since=since)  # fmt: skip
            manifest = manifest_of(partial)
            os.rename(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        return Exported(dest, manifest, size)

    def import_archive(self, source: Path, name: str | None = None) -> Imported:
        """Upload the archive `source` and import it on the server (as `name` if given)."""
        from virtkit.model import InstanceRecord
        from virtkit.ops.backup import Imported
        from virtkit.units import validate_name

        target = validate_name(name) if name is not None else None
        _check_archive(source)
        manifest = manifest_of(source)
        final = target or manifest.instance.name
        if manifest.since is not None:  # onto the instance it names, or `name`, as locally
            self.streams.client.instance(final)  # NotFoundError as locally
            done = self.streams.import_archive(source, final, incremental=True)
        else:
            if self._exists(final):
                hint = f"import it under another name: virtkit import {source.name} NEW-NAME"
                raise ConflictError(f"instance {final!r} already exists", hint=hint)
            done = self.streams.import_archive(source, target)
        return Imported(InstanceRecord.model_validate(done["instance"]), list(done.get("notes") or []),
                        str(done.get("image") or ""), bool(done.get("image_added")))  # fmt: skip

    def _exists(self, name: str) -> bool:
        try:
            self.streams.client.instance(name)
        except NotFoundError:
            return False
        return True


def _check_archive(source: Path) -> None:
    """Refuse what is not a regular file with the local import's words (storage/tarstream.py)."""
    try:
        mode = os.stat(source).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise NotFoundError(f"archive {source} does not exist") from None
        raise RejectedError(f"cannot open archive {source.name}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise RejectedError(f"{source.name} is not a regular file, so not an archive")
