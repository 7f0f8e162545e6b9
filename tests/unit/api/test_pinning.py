"""A remote's certificate, pinned or given: what the client trusts, against a real TLS server in a
thread (no virtkit server needed: it answers GET /1.0 with a small JSON document)."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from virtkit.api import remotes
from virtkit.api.client import Client
from virtkit.api.remotes import Config
from virtkit.errors import RemoteError


def _cert(directory: Path, name: str, *, san: str, ca: bool) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}",
         "-addext", f"basicConstraints=critical,CA:{'TRUE' if ca else 'FALSE'}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"api_version": "1.0", "caller": {"name": "t", "role": "admin"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Callable[[Path, Path], str]]:
    started: list[ThreadingHTTPServer] = []

    def start(cert: Path, key: Path) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return f"https://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("ca", [True, False])
def test_a_pinned_certificate_is_trusted_whatever_its_names(
    tmp_path: Path, tls_server: Callable[[Path, Path], str], ca: bool
) -> None:
    cert, key = _cert(tmp_path, "server", san="IP:10.9.9.9", ca=ca)  # not the address used
    url = tls_server(cert, key)
    config = Config(tmp_path / "cfg")
    with pytest.raises(RemoteError, match="not trusted yet"):
        remotes.add(config, "web", url)
    added = remotes.add(config, "web", url, accept=True)
    assert added.fingerprint == remotes.fingerprint(cert.read_text())
    assert Config.load(config.directory).remotes["web"].pinned
    with remotes.connect(Config.load(config.directory).get("web")) as client:
        assert client.info()["api_version"] == "1.0"
    # Given as a CA instead, the URL's host must be in it: it is not.
    with Client(url, certificate=cert) as client, pytest.raises(RemoteError, match="not the one trusted"):
        client.info()


def test_another_certificate_than_the_pinned_one_is_refused(
    tmp_path: Path, tls_server: Callable[[Path, Path], str]
) -> None:
    cert, key = _cert(tmp_path, "server", san="IP:127.0.0.1", ca=True)
    other, _ = _cert(tmp_path, "other", san="IP:127.0.0.1", ca=True)
    url = tls_server(cert, key)
    with Client(url, certificate=other, pinned=True) as client, pytest.raises(RemoteError, match="not the"):
        client.info()
    with Client(url, certificate=cert) as client:  # given, and it names 127.0.0.1: fine too
        assert client.info()["caller"]["role"] == "admin"
    with Client(url) as client, pytest.raises(RemoteError, match="not the one trusted"):  # system CAs
        client.info()
