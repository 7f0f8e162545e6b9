"""The API's streams from Python: a console over its WebSocket, a streamed exec, an export downloaded
to a file and an archive uploaded to import — none of them holding more than a chunk in memory.

    from virtkit.api.streams import Streams
    streams = Streams("https://host:8443", token="vkt_...", certificate="server.crt")
    with streams.console("web1") as console:
        console.send(b"uname -a\\n")
        print(console.read_until(b"Linux", timeout=10))
    run = streams.exec("web1", ["sh", "-c", "echo hi; echo oops >&2"])
    for fd, data in run:                  # 1: stdout, 2: stderr, as written
        ...
    run.exit_code
    streams.export("web1", Path("web1.tar.zst"))
    streams.import_archive(Path("web1.tar.zst"), "web2")  # the operation's result once it ended

Errors come back as the VirtkitError the server raised, as with virtkit.api.client.Client (which
`Streams.of(client)` reuses for the operations it waits on).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from virtkit.api.client import Client, _verify
from virtkit.api.errors import from_document
from virtkit.errors import AuthError, RemoteError, SpecError, VirtkitError

CHUNK = 1 << 20
DEFAULT_TIMEOUT = 60.0
CONSOLE_POLL = 0.1


class Streams:
    """The streaming endpoints of one virtkit server (a Unix socket or https URL, as Client)."""

    def __init__(self, url: str, *, token: str | None = None, certificate: str | Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT, client: Client | None = None,
                 pinned: bool = False) -> None:  # fmt: skip
        """`pinned`: `certificate` is the server's own, accepted by its fingerprint (as Client's)."""
        self.url, self.token, self.timeout = url, token, timeout
        self.client = client or Client(url, token=token, certificate=certificate, timeout=timeout,
                                       pinned=pinned)
        self._owns_client = client is None
        self._ssl: ssl.SSLContext | None = None
        headers = {"User-Agent": "virtkit-client"} | ({"Authorization": f"Bearer {token}"} if token else {})
        if url.startswith("unix:"):
            self._http = httpx.Client(transport=httpx.HTTPTransport(uds=url[5:]), base_url="http://virtkit",
                                      headers=headers, timeout=timeout)  # fmt: skip
        elif url.startswith("https://"):
            verify = _verify(certificate, pinned)
            self._ssl = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
            self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, verify=self._ssl,
                                      timeout=timeout)  # fmt: skip
        else:
            raise SpecError(f"invalid remote URL {url[:80]!r}", hint="use unix:PATH or https://HOST:PORT")

    @classmethod
    def of(cls, client: Client, *, token: str | None = None, certificate: str | Path | None = None,
           pinned: bool = False) -> Streams:  # fmt: skip
        """Streams of the server `client` talks to (its token and certificate given again: Client
        keeps them to itself)."""
        return cls(client.url, token=token, certificate=certificate, client=client, pinned=pinned)

    def close(self) -> None:
        self._http.close()
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Streams:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- console --------------------------------------------------------------------------------

    def console(self, name: str, *, open_timeout: float = 10.0) -> ConsoleSession:
        """Attach to instance `name`'s console (AuthError, NotFoundError, StateError as refused)."""
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect, unix_connect

        path = f"/1.0/instances/{quote(name, safe='')}/console"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        options: dict[str, Any] = {"additional_headers": headers, "open_timeout": open_timeout,
                                   "max_size": 16 << 20, "compression": None, "proxy": None}  # fmt: skip
        try:
            if self.url.startswith("unix:"):
                made = unix_connect(self.url[5:], "ws://virtkit" + path, legacy=True, **options)
            else:
                made = connect("wss://" + self.url[len("https://") :].rstrip("/") + path, ssl=self._ssl,
                               legacy=True, **options)  # fmt: skip
        except InvalidStatus as exc:
            status, body = exc.response.status_code, exc.response.body
            if status in (401, 403) and not body:  # closed before the handshake: no document to read
                raise AuthError(f"the server at {self.url} refused the console (HTTP {status})",
                                hint="a token with the operator role is needed") from None
            raise _refused(status, body) from None
        except (OSError, TimeoutError) as exc:
            raise RemoteError(f"cannot reach the virtkit server at {self.url}: {exc}") from None
        return ConsoleSession(made)

    # --- exec -----------------------------------------------------------------------------------

    def exec(self, name: str, command: list[str], *, timeout: float = 60.0) -> ExecRun:
        """Start `command` in instance `name`; iterate the result for its output as written."""
        request = self._http.build_request(
            "POST", f"/1.0/instances/{quote(name, safe='')}/exec/stream",
            json={"command": command, "timeout": timeout}, timeout=httpx.Timeout(self.timeout, read=None),
        )  # fmt: skip
        response = self._send(request)
        return ExecRun(response)

    # --- export / import ------------------------------------------------------------------------

    def export(self, name: str, dest: Path | IO[bytes], *, compress: str = "zstd",
               instance_only: bool = False, since: str | None = None) -> int:  # fmt: skip
        """Download instance `name`'s archive to `dest` (a new file, or an open binary file); the
        bytes written. A new file is removed again if the download does not complete."""
        params: dict[str, Any] = {"compress": compress, "instance_only": instance_only}
        if since is not None:
            params["since"] = since
        request = self._http.build_request("GET", f"/1.0/instances/{quote(name, safe='')}/export",
                                           params=params, timeout=httpx.Timeout(self.timeout, read=None))
        response = self._send(request)
        if not isinstance(dest, Path):
            return _copy_body(response, dest)
        try:
            with open(dest, "xb") as file:
                return _copy_body(response, file)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def import_archive(self, source: Path | IO[bytes], name: str | None = None, *, wait: bool = True,
                       identity: bool = False, nics: Sequence[str] = (),
                       incremental: bool = False) -> dict[str, Any]:  # fmt: skip
        """Upload the archive `source` and import it (as `name` if given): the import operation's
        result once it has ended (its error raised), or with `wait=False` the operation itself.
        `identity`, `nics` (`NET,mac=M,ip=A`, one per archived NIC) and `incremental` (onto the
        existing instance `name`) as the upload route takes them."""
        params: dict[str, Any] = {"name": name} if name else {}
        if identity:
            params["identity"] = "1"
        if incremental:
            params["incremental"] = "1"
        if nics:
            params["nic"] = list(nics)
        if isinstance(source, Path):
            params["filename"] = source.name
            with open(source, "rb") as file:
                document = self._upload(file, params, os.fstat(file.fileno()).st_size)
        else:
            document = self._upload(source, params, None)
        if not wait:
            return dict(document)
        return self.client.wait(str(document["id"]))

    def _upload(self, file: IO[bytes], params: dict[str, Any], size: int | None) -> Any:
        def chunks() -> Iterator[bytes]:
            while data := file.read(CHUNK):
                yield data

        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        try:
            response = self._http.post("/1.0/instances/import/upload", params=params, content=chunks(),
                                       headers=headers, timeout=httpx.Timeout(self.timeout, write=None))
        except httpx.HTTPError as exc:
            raise RemoteError(f"the upload to {self.url} failed: {exc}") from None
        return _answer(response)

    # --- plumbing -------------------------------------------------------------------------------

    def _send(self, request: httpx.Request) -> httpx.Response:
        """The answer's head (its body left to stream); the server's error raised if it is one."""
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the virtkit server at {self.url}: {exc}") from None
        if response.is_error:
            try:
                body = response.read()
            finally:
                response.close()
            raise _refused(response.status_code, body)
        return response


def _answer(response: httpx.Response) -> Any:
    if response.is_error:
        raise _refused(response.status_code, response.content)
    return response.json()


def _refused(status: int, body: bytes | bytearray | None) -> VirtkitError:
    try:
        document = json.loads(body or b"")
    except ValueError:
        document = None
    return from_document(document, status)


def _copy_body(response: httpx.Response, file: IO[bytes]) -> int:
    written = 0
    try:
        for data in response.iter_bytes(CHUNK):
            file.write(data)
            written += len(data)
    except httpx.HTTPError as exc:
        operation = response.headers.get("x-virtkit-operation", "")
        hint = f"see why: virtkit operation show {operation}" if operation else None
        raise RemoteError(f"the download was cut short after {written} bytes: {exc}", hint=hint) from None
    finally:
        response.close()
    return written


class ExecRun:
    """A streamed exec: iterate it for (1|2, bytes) as the command writes; then `exit_code`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.exit_code: int | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        try:
            for line in self.response.iter_lines():
                if not line:
                    continue
                message = json.loads(line)
                kind = message.get("type")
                if kind in ("stdout", "stderr"):
                    yield (1 if kind == "stdout" else 2), base64.b64decode(message["data"])
                elif kind == "exit":
                    self.exit_code = int(message["exit_code"])
                elif kind == "error":
                    raise from_document(message.get("error"), 500)
        except httpx.HTTPError as exc:
            raise RemoteError(f"the exec stream was cut short: {exc}") from None
        finally:
            self.response.close()
        if self.exit_code is None:
            raise RemoteError("the exec stream ended without the command's exit code")

    def close(self) -> None:
        """Stop reading: the server kills the command if it still runs."""
        self.response.close()


class ConsoleSession:
    """A console over a WebSocket: bytes in, bytes out."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.closed_reason: str | None = None

    def send(self, data: bytes) -> None:
        self.connection.send(data)

    def resize(self, rows: int, columns: int) -> None:
        self.connection.send(json.dumps({"resize": [rows, columns]}))

    def recv(self, timeout: float | None = None) -> bytes | None:
        """What the console said next (b"" when nothing came within `timeout`), None once closed."""
        from websockets.exceptions import ConnectionClosed

        try:
            message = self.connection.recv(timeout=timeout)
        except TimeoutError:
            return b""
        except ConnectionClosed as exc:
            self.closed_reason = exc.rcvd.reason if exc.rcvd is not None else ""
            return None
        return message if isinstance(message, bytes) else message.encode()

    def read_until(self, needle: bytes, timeout: float) -> bytes:
        """What the console says until `needle` appears, it closes, or `timeout` seconds pass."""
        seen = bytearray()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            said = self.recv(min(left, CONSOLE_POLL * 10))
            if said is None:
                break
            seen += said
            if needle in seen[-(len(said) + len(needle)) :]:  # only where it can newly be
                break
        return bytes(seen)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> ConsoleSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
