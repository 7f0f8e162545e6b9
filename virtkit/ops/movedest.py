"""What a cold move (ops/movecold.py) sends to and asks of the other host: the Destination it
talks to (ApiDestination: that host's API through api/streams.py; a test's fake), and Growing, the
archive an export writes read while it grows, so that the upload starts with its first bytes."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

from virtkit.errors import NotFoundError

if TYPE_CHECKING:
    from virtkit.api.streams import Streams

FOLLOW_POLL = 0.05


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Destination(Protocol):
    """The host an instance goes to, as seen through its API (ApiDestination) or a test's fake."""

    def instances(self) -> list[dict[str, Any]]: ...
    def networks(self) -> dict[str, str]: ...  # name -> subnet
    def pools(self) -> set[str]: ...
    def upload(self, source: Readable, name: str, *, identity: bool, nics: list[str],
               incremental: bool = False) -> dict[str, Any]: ...
    def start(self, name: str) -> None: ...
    def state(self, name: str) -> str | None: ...  # None: no such instance
    def delete(self, name: str) -> None: ...
    def imports(self, name: str) -> list[str]: ...  # its import operations still running
    def wait(self, operation: str, timeout: float) -> None: ...
    def restore(self, name: str, snapshot: str) -> None: ...
    def forget_snapshots(self, name: str) -> None: ...
    def delete_snapshot(self, name: str, snapshot: str) -> None: ...


class Growing:
    """The archive an export writes into `directory`, read (as a binary file) while it grows:
    end of file once the export has ended, its error raised if it failed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written = threading.Event()
        self.error: BaseException | None = None
        self.sent = 0
        self._fd = -1

    def read(self, size: int = -1) -> bytes:
        want = size if size > 0 else 1 << 20
        while True:
            ended = self.written.is_set()  # looked at before reading: what was written by then is there
            if self._fd < 0 and not self._open():
                if ended:
                    return self._end()
                self.written.wait(FOLLOW_POLL)
                continue
            data = os.pread(self._fd, want, self.sent) if self._fd >= 0 else b""
            if data:
                self.sent += len(data)
                return data
            if ended:
                return self._end()
            self.written.wait(FOLLOW_POLL)

    def _end(self) -> bytes:
        if self.error is not None:
            raise self.error
        return b""

    def _open(self) -> bool:
        with os.scandir(self.directory) as entries:  # the writer's partial file, or its final name
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):  # renamed between the look and the open
                        self._fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
                        return True
        return False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# --- the destination through its API ---------------------------------------------------------------


class ApiDestination:
    """A Destination over a server's API: `streams` (api/streams.py) and its client."""

    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self.client = streams.client

    def instances(self) -> list[dict[str, Any]]:
        return list(self.client.instances())

    def networks(self) -> dict[str, str]:
        listed = self.client.request("GET", "/1.0/networks")
        return {str(n["name"]): str(n.get("subnet") or "") for n in listed}

    def pools(self) -> set[str]:
        return {str(p["name"]) for p in self.client.request("GET", "/1.0/storage-pools")}

    def upload(self, source: Readable, name: str, *, identity: bool, nics: list[str],
               incremental: bool = False) -> dict[str, Any]:  # fmt: skip
        return dict(self.streams.import_archive(cast("IO[bytes]", source), name, identity=identity, nics=nics,
                                                incremental=incremental))  # fmt: skip

    def start(self, name: str) -> None:
        self.client.action(name, "start", wait=True)

    def state(self, name: str) -> str | None:
        try:
            return str(self.client.instance(name).get("state"))
        except NotFoundError:
            return None

    def delete(self, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            self.client.delete(name, force=True)

    def imports(self, name: str) -> list[str]:
        running = self.client.operations("running") + self.client.operations("pending")
        return [str(o["id"]) for o in running if o.get("action") == "import" and o.get("target") == name]

    def wait(self, operation: str, timeout: float) -> None:
        self.client.wait(operation, timeout=timeout)

    def restore(self, name: str, snapshot: str) -> None:
        self.client.run("POST", f"/1.0/instances/{name}/snapshots/{snapshot}/restore", json={})

    def forget_snapshots(self, name: str) -> None:
        for snapshot in self.client.request("GET", f"/1.0/instances/{name}/snapshots"):
            self.delete_snapshot(name, str(snapshot["name"]))

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        self.client.run("DELETE", f"/1.0/instances/{name}/snapshots/{snapshot}")
