"""The API's Python client: `Client("unix:/var/lib/virtkit/unix.socket")` or
`Client("https://host:8443", token="vkt_...", certificate="server.crt")`.

Every answer that is an error comes back as the VirtkitError the server raised (same class,
message and hint), so a remote command fails exactly as the local one would. Long actions answer
202 with an operation; `run()` waits for it and returns its result, or raises its error.

    from virtkit.api import Client
    api = Client("unix:/var/lib/virtkit/unix.socket")
    api.launch({"image": "tiny", "name": "web1", "wait": True})
    print([i["name"] for i in api.instances()])
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from virtkit.api.errors import from_document
from virtkit.errors import RemoteError, SpecError

DEFAULT_TIMEOUT = 60.0
WAIT_STEP = 30.0  # seconds per `wait` request while an operation runs


class Client:
    """A connection to one virtkit server."""

    def __init__(self, url: str, *, token: str | None = None, certificate: str | Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:  # fmt: skip
        self.url = url
        headers = {"User-Agent": "virtkit-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if url.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=url[5:])
            self._http = httpx.Client(transport=transport, base_url="http://virtkit", headers=headers,
                                      timeout=timeout)  # fmt: skip
        elif url.startswith("https://"):
            verify: ssl.SSLContext | bool = True
            if certificate is not None:
                verify = ssl.create_default_context(cafile=str(certificate))
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
        try:
            response = self._http.request(
                method, path, json=json, params=params,
                timeout=timeout if timeout is not None else self._http.timeout,
            )  # fmt: skip
        except httpx.TimeoutException:
            raise RemoteError(f"the virtkit server at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the virtkit server at {self.url}: {exc}",
                              hint="is `virtkit serve` running there? `virtkit remote list`") from None
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
