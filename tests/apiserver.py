"""A real `virtkit serve` process for tests: on the state root's Unix socket, or on 127.0.0.1 with TLS.

    server = start_server(root)                         # unix:ROOT/unix.socket, every caller admin
    server = start_server(root, tls=tmp_path / "tls")   # https://127.0.0.1:PORT, a self-signed cert
    server.client(token)                                # virtkit.api.Client for it
    server.stop()                                       # SIGTERM, then SIGKILL; its log on failure

The certificate is made by the test (openssl, IP SAN 127.0.0.1) and handed to `serve` with
--tls-cert/--tls-key; `server.cert` is what a client pins. The port is a free one picked by binding
port 0 first. `servers` is a fixture factory that stops every server it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from virtkit.api.client import Client

VIRTKIT = Path(sys.executable).parent / "virtkit"
START_TIMEOUT = 20.0


@dataclass
class Server:
    root: Path
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    cert: Path | None = None
    key: Path | None = None
    clients: list[Client] = field(default_factory=list)

    def client(self, token: str | None = None, timeout: float = 60) -> Client:
        made = Client(self.url, token=token, certificate=self.cert, timeout=timeout)
        self.clients.append(made)
        return made

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        for made in self.clients:
            made.close()
        self.clients.clear()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def kill(self) -> None:
        """As a crash would end it: SIGKILL, no shutdown."""
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate (CA:TRUE, so a client can pin it) for `host`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=virtkit test", "-addext", f"subjectAltName=IP:{host},DNS:localhost",
         "-addext", "basicConstraints=critical,CA:TRUE", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def start_server(root: Path, *, tls: Path | None = None, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> Server:  # fmt: skip
    """`virtkit --root ROOT serve [ARGS]`, on the Unix socket, or (tls: a directory for the
    certificate) on 127.0.0.1:a free port with TLS; returns once the server answers `GET /1.0`."""
    root.mkdir(parents=True, exist_ok=True)
    log = root.parent / f"serve-{root.name}-{time.monotonic_ns()}.log"
    argv = [str(VIRTKIT), "--root", str(root), "serve", *args]
    cert = key = None
    if tls is None:
        url = f"unix:{root / 'unix.socket'}"
    else:
        cert, key = make_cert(tls)
        port = free_port()
        argv += ["--listen", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key)]
        url = f"https://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})  # fmt: skip
    server = Server(root, url, process, log, cert, key)
    _wait_ready(server, tls is None)
    return server


def _wait_ready(server: Server, local: bool) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"virtkit serve exited {server.process.returncode}:\n{server.output()}")
        if "listening on" in server.output():
            probe = Client(server.url, certificate=server.cert, timeout=5)
            try:
                if local:
                    probe.info()
                else:  # no token yet: a 401 proves TLS and the app answer
                    probe.request("GET", "/1.0/openapi.json")
                return
            except Exception:  # not up yet
                pass
            finally:
                probe.close()
        time.sleep(0.05)
    server.stop()
    raise AssertionError(f"virtkit serve did not answer within {START_TIMEOUT} s:\n{server.output()}")


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """start_server, with every server it started stopped at the end (its log printed)."""
    started: list[Server] = []

    def start(root: Path, **kwargs: object) -> Server:
        server = start_server(root, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        print(f"--- virtkit serve log ({server.url}) ---\n{server.output()[-3000:]}")
