"""Exports and imports over the API: an instance's archive downloaded as it is written, and an
archive uploaded, then imported (operator role; docs/backups.md for the archive itself).

`GET /1.0/instances/NAME/export?compress=zstd|gzip|none&instance_only=BOOL&since=SNAP`
    An "export" operation (the same `Backups.export` as `virtkit export`, under the instance's
    lock) writes the archive into a private directory under ROOT/transfers/; the answer streams
    that file *as it grows* (the writer only ever appends) and ends when the operation has
    succeeded and every byte is sent. The archive is never held in memory, and the download starts
    as soon as its first bytes are written. What fails before any byte is written (no such
    instance, a container on a copy's layers, a bad `since`) is an ordinary error answer; a failure
    later cuts the connection short (no final chunk: the client sees a truncated body, never a
    plausible archive), and the operation named by `X-Virtkit-Operation` says why. The directory
    goes once both the writer and the download are done, whichever ends first, even when the
    client leaves mid-download (the export then still finishes, into nothing).

`POST /1.0/instances/import/upload?name=NAME&filename=LABEL[&identity=1&nic=NET,mac=M,ip=A...]`
`[&incremental=1]`
    The body (the archive, any compression `import` reads) is streamed to a file in a private
    directory under ROOT/transfers/, at most half the free space of the state root's file system
    (the archive must sit beside its unpacked copy while it is imported): past that, or a
    Content-Length over it, 413. A body that is no archive at all (neither compressed nor a tar
    header) is refused at once with 400; anything else becomes an "import" operation running
    `Backups.import_archive` — which checks the manifest, sizes and every checksum before it
    registers anything — and 202 with it. A client that leaves mid-upload makes no operation. The
    uploaded file is removed in every case. `identity=1` (a cold move, ops/movecold.py) keeps the
    archive's UUID; each `nic` (one per archived NIC, in order, as `--network` takes them) gives
    the network, MAC and address that NIC gets here. A NAME that exists is refused before the
    upload, unless `incremental=1` says the archive is an incremental one for that instance (then
    one that does not exist is refused).

ROOT/transfers/ entries carry the server's PID (store/files.temp_name): those of a server that was
killed are swept by the next transfer.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from virtkit.api.context import OPERATOR, ApiContext
from virtkit.api.routes.exec import ReleasingResponse
from virtkit.errors import ConflictError, SpecError, VirtkitError
from virtkit.model import InstanceRecord, OperationRecord
from virtkit.ops.backup import Backups
from virtkit.ops.nics import parse_nic
from virtkit.storage.archive import remove_tree
from virtkit.storage.snapshots import sweep
from virtkit.store.files import temp_name
from virtkit.units import format_size, validate_name

router = APIRouter(prefix="/1.0/instances", tags=["backups"])

TRANSFERS = "transfers"
CHUNK = 1 << 20
FOLLOW_POLL = 0.05  # how often a download looks for more of the archive while it is written
FIRST_BYTES_WAIT = 600.0  # how long the answer waits for the export to begin writing
SUFFIXES = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}
TYPES = {"zstd": "application/zstd", "gzip": "application/gzip", "none": "application/x-tar"}
MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"BZh")  # what storage/tarstream.py reads
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NICS = Query(None, description="with identity: NET,mac=M,ip=A for each archived NIC, in order")


@contextlib.contextmanager
def _held(directory: Path) -> Iterator[None]:
    """Remove `directory` when the block fails (it is handed on when it does not)."""
    try:
        yield
    except BaseException:
        remove_tree(directory)
        raise


def transfer_dir(root: Path, what: str) -> Path:
    """A new private directory under ROOT/transfers/ (stale ones of dead servers swept first)."""
    top = root / TRANSFERS
    top.mkdir(mode=0o700, parents=True, exist_ok=True)
    sweep(top)
    path = top / temp_name(what)
    os.mkdir(path, 0o700)
    return path


# --- export ---------------------------------------------------------------------------------------


class Follower:
    """The archive an export operation writes into `directory`, read as it grows.

    The writer (the operation) and the reader (the download) each say when they are done; the
    second of them removes the directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written = threading.Event()  # the operation has ended
        self.error: VirtkitError | None = None
        self._guard = threading.Lock()
        self._done = 0
        self._fd = -1
        self._closed = False

    def finished(self) -> None:
        """One side (writer or reader) is done; the last one removes the directory."""
        with self._guard:
            self._done += 1
            last = self._done == 2
        if last:
            remove_tree(self.directory)

    def wait_first(self, timeout: float) -> None:
        """Until the archive exists or the operation ended (raising its error if it failed)."""
        deadline = time.monotonic() + timeout
        while not self._find() and not self.written.is_set() and time.monotonic() < deadline:
            self.written.wait(FOLLOW_POLL)
        if self.error is not None and self._find() is None:
            raise self.error

    def _find(self) -> Path | None:
        with os.scandir(self.directory) as entries:  # the writer's partial file, or its final name
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    return Path(entry.path)
        return None

    def chunks(self) -> Iterator[bytes]:
        """The archive's bytes as they are written; cut short (an exception) if the export fails."""
        if not self._open():
            return
        offset = 0
        while True:
            ended = self.written.is_set()  # read before the file: what was written by then is there
            with self._guard:
                if self._closed:
                    return
                data = os.pread(self._fd, CHUNK, offset)
            if data:
                offset += len(data)
                yield data
                continue
            if ended:
                if self.error is not None:
                    raise self.error
                return
            self.written.wait(FOLLOW_POLL)

    def _open(self) -> bool:
        while True:
            found = self._find()
            if found is None:
                if self.error is not None:
                    raise self.error
                if self.written.is_set():
                    return False
                self.written.wait(FOLLOW_POLL)
                continue
            with self._guard:
                if self._closed:
                    return False
                try:  # renamed into place between the look and the open: look again
                    self._fd = os.open(found, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                return True

    def release(self) -> None:
        """The download is over (sent, abandoned or failed)."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        self.finished()


ARCHIVE: dict[int | str, dict[str, Any]] = {
    200: {"content": {t: {} for t in TYPES.values()}, "description": "the archive, as it is written"},
}


@router.get("/{name}/export", response_class=StreamingResponse, responses=ARCHIVE)
def export_instance(
    name: str,
    compress: Literal["zstd", "gzip", "none"] = Query("zstd"),
    instance_only: bool = Query(False),
    since: str | None = Query(None, max_length=63),
    ctx: ApiContext = OPERATOR,
) -> StreamingResponse:
    """The instance's backup archive (as `virtkit export` writes it), streamed as it is written."""
    record = ctx.store.get(InstanceRecord, validate_name(name))
    if since is not None:
        validate_name(since, what="snapshot name")
    directory = transfer_dir(ctx.root, "export")
    follower = Follower(directory)
    dest = directory / f"{record.name}{SUFFIXES[compress]}"

    def work(_op: object) -> dict[str, Any]:
        try:
            done = Backups(ctx.root, ctx.store).export(record.name, dest, compression=compress,
                                                       instance_only=instance_only, since=since)  # fmt: skip
            return {"size": done.size, "compression": compress, "snapshots": len(done.manifest.snapshots),
                    "notes": list(done.manifest.notes)}  # fmt: skip
        except VirtkitError as exc:
            follower.error = exc
            raise
        except BaseException as exc:
            follower.error = VirtkitError(f"the export failed: {exc}")
            raise
        finally:
            follower.written.set()
            follower.finished()

    with _held(directory):
        operation = ctx.operations.submit("export", record.name, work)
    try:
        follower.wait_first(FIRST_BYTES_WAIT)
    except BaseException:
        follower.release()
        raise
    headers = {
        "Content-Disposition": f'attachment; filename="{dest.name}"',
        "X-Virtkit-Operation": operation.id, "Cache-Control": "no-store",
    }  # fmt: skip
    return ReleasingResponse(follower.chunks(), follower.release, media_type=TYPES[compress], headers=headers)


# --- import ---------------------------------------------------------------------------------------


def upload_limit(root: Path) -> int:
    """The largest archive an upload may send: half the free space where the state root lives."""
    return shutil.disk_usage(root if root.exists() else root.parent).free // 2


UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("/import/upload", status_code=202, openapi_extra=UPLOAD_BODY)
async def import_upload(
    request: Request,
    response: Response,
    name: str | None = Query(None, max_length=63),
    filename: str | None = Query(None, max_length=100),
    identity: bool = Query(False),
    incremental: bool = Query(False),
    nic: list[str] | None = NICS,
    ctx: ApiContext = OPERATOR,
) -> dict[str, Any]:
    """Upload a backup archive (the request body) and import it as a new instance (`name`, else the
    archive's own name): 202 with the "import" operation, whose result is the new instance."""
    target = validate_name(name) if name is not None else None
    if len(nic or []) > 32:
        raise SpecError("an instance has at most 32 NICs: too many nic parameters")
    nics = [parse_nic(text[:200]) for text in nic or []]
    label = filename or "uploaded-archive"
    if not LABEL.fullmatch(label):
        raise SpecError(f"invalid filename {label[:100]!r}", hint="letters, digits, '.', '_' and '-'")
    if target is not None and incremental:
        ctx.store.get(InstanceRecord, target)  # NotFoundError: nothing to apply the changes to
    elif target is not None and ctx.store.find(InstanceRecord, target) is not None:
        raise ConflictError(f"instance {target!r} already exists", hint="import it under another name")
    limit = upload_limit(ctx.root)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_big(limit)
    directory = await anyio.to_thread.run_sync(transfer_dir, ctx.root, "import")
    with _held(directory):
        path = directory / label
        size = await _receive(request, path, limit)
        await anyio.to_thread.run_sync(_looks_like_archive, path, size)

        def work(_op: object) -> dict[str, Any]:
            try:
                done = Backups(ctx.root, ctx.store).import_archive(path, target, identity=identity, nics=nics)
            finally:
                remove_tree(directory)
            return {"instance": done.record.model_dump(mode="json"), "notes": done.notes,
                    "image": done.image, "image_added": done.image_added, "size": size}  # fmt: skip

        operation = ctx.operations.submit("import", target or "", work)
    return _accepted(response, operation)


def _accepted(response: Response, record: OperationRecord) -> dict[str, Any]:
    response.status_code = 202
    response.headers["Location"] = f"/1.0/operations/{record.id}"
    return record.model_dump(mode="json")


def _too_big(limit: int) -> HTTPException:
    return HTTPException(413, detail=f"the upload is over {format_size(limit)}, half the free space of the "
                                     "state root's file system: free some space, or import the archive on "
                                     "the host itself (virtkit import FILE)")


async def _receive(request: Request, path: Path, limit: int) -> int:
    """Write the request body to `path` (a new file) in large writes off the event loop; its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    size = 0
    pending = bytearray()
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_big(limit)
            pending += chunk
            if len(pending) >= CHUNK:
                await anyio.to_thread.run_sync(_write_all, fd, bytes(pending))
                pending.clear()
        await anyio.to_thread.run_sync(_write_all, fd, bytes(pending))
    except ClientDisconnect:
        raise SpecError("the upload was cut short: the client went away") from None
    finally:
        os.close(fd)
    return size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _looks_like_archive(path: Path, size: int) -> None:
    """SpecError unless the file starts as something `import` reads: compressed, or a tar header."""
    if size == 0:
        raise SpecError("the upload is empty: send the archive as the request body")
    with open(path, "rb") as file:
        head = file.read(tarfile.BLOCKSIZE)
    if head.startswith(MAGIC):
        return
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        raise SpecError("the upload is not a virtkit backup archive (neither compressed nor a tar archive)",
                        hint="send a file made by `virtkit export`") from None
