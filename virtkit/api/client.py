"""The API's Python client: `Client("unix:/var/lib/virtkit/unix.socket")` or
`Client("https://host:8443", token="vkt_...", certificate="server.crt")`.

Every answer that is an error comes back as the VirtkitError the server raised (same class,
message and hint), so a remote command fails exactly as the local one would. Long actions answer
202 with an operation; `run()` waits for it and returns its result, or raises its error.

    from virtkit.api import Client
    api = Client("unix:/var/lib/virtkit/unix.socket")
    api.launch({"image": "tiny", "name": "web1", "wait": True})
    print([i["name"] for i in api.instances()])
    for event in api.events(["instance"]):  # as they happen, until the caller stops reading
        print(event["action"], event["target"])

httpx (and ssl) are imported when a client is made, not with this module: the CLI imports it only
for a remote, and every local command stays as fast as before.
"""

from __future__ import annotations

import base64
import json as jsonlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtkit.api.errors import from_document
from virtkit.errors import RemoteError, SpecError

if TYPE_CHECKING:
    import ssl

    import httpx

DEFAULT_TIMEOUT = 60.0
WAIT_STEP = 30.0  # seconds per `wait` request while an operation runs
EVENTS_SILENCE = 30.0  # the server sends a keepalive every 5 s: this long without one, it is gone


class Client:
    """A connection to one virtkit server."""

    def __init__(self, url: str, *, token: str | None = None, certificate: str | Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT, pinned: bool = False) -> None:  # fmt: skip
        """`certificate`: a PEM file the server's certificate must chain to (else the system's CAs).
        `pinned`: that file is the server's own self-signed certificate, accepted by its fingerprint
        (`virtkit remote add --accept-certificate`): then it alone is trusted, whatever host name
        the URL uses."""
        import httpx

        self.url = url
        headers = {"User-Agent": "virtkit-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if url.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=url[5:])
            self._http = httpx.Client(transport=transport, base_url="http://virtkit", headers=headers,
                                      timeout=timeout)  # fmt: skip
        elif url.startswith("https://"):
            verify = _verify(certificate, pinned)
            self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, verify=verify,
                                      timeout=timeout)
        else:
            raise SpecError(f"invalid remote URL {url[:80]!r}", hint="use unix:PATH or https://HOST:PORT")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:  # fmt: skip
        """The decoded JSON answer of one request; the server's error, raised, when it failed."""
        import httpx

        try:
            response = self._http.request(
                method, path, json=json, params=params,
                timeout=timeout if timeout is not None else self._http.timeout,
            )  # fmt: skip
        except httpx.TimeoutException:
            raise RemoteError(f"the virtkit server at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from None
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.is_error:
            raise from_document(document, response.status_code)
        if document is None and response.content:
            raise RemoteError(f"the server at {self.url} answered {path} with something that is not JSON")
        return document

    def run(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """A request that may answer with an operation (202): its result once it has ended."""
        document = self.request(method, path, json=json, params=params)
        if not (isinstance(document, dict) and document.get("status") in ("pending", "running")
                and "id" in document and "action" in document):  # fmt: skip
            return document
        return self.wait(str(document["id"]))

    def wait(self, operation_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The result of an operation once it has ended; its error raised if it failed."""
        while True:
            step = WAIT_STEP if timeout is None else min(WAIT_STEP, timeout)
            record = self.request("GET", f"/1.0/operations/{operation_id}/wait", params={"timeout": step},
                                  timeout=step + DEFAULT_TIMEOUT)  # fmt: skip
            if record["status"] not in ("pending", "running"):
                break
            if timeout is not None:
                timeout -= step
                if timeout <= 0:
                    return dict(record)
        if record["status"] == "success":
            return dict(record.get("result") or {})
        error = (record.get("result") or {}).get("error")
        if error is not None:
            raise from_document(error, 500)
        raise RemoteError(f"operation {operation_id} ({record['action']}) {record['status']}: "
                          f"{record.get('error') or 'no reason given'}")  # fmt: skip

    # --- resources ------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return dict(self.request("GET", "/1.0"))

    def instances(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/1.0/instances"))

    def instance(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/1.0/instances/{name}"))

    def launch(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /1.0/instances (`"start": False` only creates); {"instance": ..., "runtime": ...}."""
        return dict(self.run("POST", "/1.0/instances", json=body))

    def action(self, name: str, action: str, **options: Any) -> dict[str, Any]:
        """start, stop, restart, pause, resume; {"instance": record}."""
        return dict(self.run("POST", f"/1.0/instances/{name}/{action}", json=options))

    def delete(self, name: str, *, force: bool = False) -> dict[str, Any]:
        return dict(self.run("DELETE", f"/1.0/instances/{name}", params={"force": force}))

    def exec(self, name: str, command: list[str], *, timeout: float = 60) -> dict[str, Any]:
        """{"exit_code", "stdout", "stderr"} (output base64-encoded)."""
        return dict(self.request("POST", f"/1.0/instances/{name}/exec",
                                 json={"command": command, "timeout": timeout},
                                 timeout=timeout + DEFAULT_TIMEOUT))  # fmt: skip

    def exec_stream(self, name: str, command: list[str], write: Callable[[int, bytes], object], *,
                    timeout: float = 60) -> int:  # fmt: skip
        """Run a command in the instance, its output handed to `write(1|2, bytes)` as it is written
        (`POST .../exec/stream`); its exit code. The server's error when it could not run it."""
        import httpx

        body = {"command": command, "timeout": timeout}
        limits = httpx.Timeout(DEFAULT_TIMEOUT, read=EVENTS_SILENCE)  # keepalives come every 15 s
        try:
            with self._http.stream("POST", f"/1.0/instances/{name}/exec/stream", json=body,
                                   timeout=limits) as response:  # fmt: skip
                _raise_for(response)
                for line in response.iter_lines():
                    code = _exec_line(line, write)
                    if code is not None:
                        return code
        except httpx.TimeoutException:
            raise RemoteError(f"the virtkit server at {self.url} went silent during exec") from None
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from None
        raise RemoteError(f"the virtkit server at {self.url} ended exec without the command's exit code")

    def runtime(self, name: str) -> dict[str, Any]:
        """The saved runtime (`virtkit show NAME --runtime`): {"kind", "argv", "config", "notices"}."""
        return dict(self.request("GET", f"/1.0/instances/{name}/runtime"))

    def set_config(self, name: str, config: dict[str, str]) -> dict[str, Any]:
        """`virtkit set NAME key=value...`: {"instance": record, "applied_live": bool}."""
        return dict(self.request("PATCH", f"/1.0/instances/{name}", json={"config": config}))

    def operations(self, status: str | None = None) -> list[dict[str, Any]]:
        return list(self.request("GET", "/1.0/operations", params={"status": status} if status else None))

    def operation(self, operation_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/1.0/operations/{operation_id}"))

    def events(self, types: list[str] | None = None, *, keepalives: bool = False) -> Iterator[dict[str, Any]]:
        """Lifecycle events as they happen (`GET /1.0/events`, Server-Sent Events), only those of
        `types` when given, until the caller stops reading; RemoteError when the stream breaks.
        With `keepalives`, the server's comments come as empty dicts too (the first says the
        stream is open)."""
        import httpx

        timeout = httpx.Timeout(DEFAULT_TIMEOUT, read=EVENTS_SILENCE)
        params = {"type": types} if types else None
        try:
            with self._http.stream("GET", "/1.0/events", params=params, timeout=timeout) as response:
                _raise_for(response)
                yield from _sse(response.iter_lines(), keepalives)
        except httpx.TimeoutException:
            raise RemoteError(f"the virtkit server at {self.url} went silent: its event stream is lost",
                              hint="run `virtkit monitor` again") from None
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from None
        raise RemoteError(f"the virtkit server at {self.url} closed its event stream",
                          hint="is it still running? run `virtkit monitor` again")  # fmt: skip


def _raise_for(response: httpx.Response) -> None:
    """The server's error, raised, when a streamed answer is one."""
    if response.is_error:
        response.read()
        try:
            document = response.json()
        except ValueError:
            document = None
        raise from_document(document, response.status_code)


def _exec_line(line: str, write: Callable[[int, bytes], object]) -> int | None:
    """One NDJSON line of exec/stream: output written, or the exit code at the end."""
    if not line.strip():
        return None
    try:
        message = jsonlib.loads(line)
    except ValueError:
        raise RemoteError("the server's exec stream holds something that is not JSON") from None
    kind = message.get("type")
    if kind in ("stdout", "stderr"):
        write(1 if kind == "stdout" else 2, base64.b64decode(message.get("data") or ""))
    elif kind == "exit":
        return int(message["exit_code"])
    elif kind == "error":
        raise from_document(message.get("error"), 500)
    return None


def _sse(lines: Iterator[str], keepalives: bool = False) -> Iterator[dict[str, Any]]:
    """The JSON documents of `data:` fields, one per message; comments skipped, or with
    `keepalives` given as empty dicts."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                try:
                    event = jsonlib.loads("\n".join(data))
                except ValueError:
                    event = None
                if isinstance(event, dict):
                    yield event
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith(":") and keepalives:
            yield {}


def _verify(certificate: str | Path | None, pinned: bool) -> ssl.SSLContext | bool:
    import ssl

    if certificate is None:
        return True
    try:
        context = ssl.create_default_context(cafile=str(certificate))
    except (OSError, ssl.SSLError) as exc:
        raise SpecError(f"cannot use the certificate {certificate}: {exc}",
                        hint="give the server's certificate as a PEM file") from None  # fmt: skip
    if pinned:
        # The one self-signed certificate in `cafile` is the only one trusted: its key is the
        # server's, so the name the URL uses need not be in it (as `incus remote add` pins).
        context.check_hostname = False
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf (not a CA) may be the anchor
    return context


def _unreachable(url: str, exc: httpx.HTTPError) -> RemoteError:
    import ssl

    cause = exc.__context__ or exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return RemoteError(
            f"the virtkit server at {url} presented a certificate that is not the one trusted",
            hint="if it was renewed: `virtkit remote remove` then `remote add` it again, after checking "
            "its fingerprint",
        )
    return RemoteError(f"cannot reach the virtkit server at {url}: {exc}",
                       hint="is `virtkit serve` running there? `virtkit remote list`")
