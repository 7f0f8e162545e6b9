"""`virtkit serve`: the API on a Unix socket (trusted peers) or on HOST:PORT with TLS (tokens).

The sockets are made here, not by uvicorn: the Unix socket is bound under a umask that leaves it
mode 0660, then given to root and the `virtkit` group when that group exists, so only they can
connect (uvicorn would make it 0666). TCP always speaks TLS; without --tls-cert/--tls-key a
self-signed certificate for the listen address is made once under ROOT/server/ (as Incus does),
and a remote pins it (`virtkit remote add`).

At start the server marks operations a previous server left pending or running as failed
(`Operations.recover`); instances need no re-attaching, since their state is read from their
processes on every request. Stopping or killing the server leaves running instances running.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import ConflictError, SpecError
from virtkit.images.tools import run_tool
from virtkit.store import Store

log = logging.getLogger(__name__)

SOCKET_NAME = "unix.socket"
GROUP = "virtkit"
CERT_DAYS = 3650
OPENSSL_TIMEOUT = 60.0


@dataclass(frozen=True)
class Listen:
    """Where to serve: a Unix socket path, or a TCP host and port."""

    path: Path | None = None
    host: str = ""
    port: int = 0

    @property
    def local(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def default_socket(root: Path) -> Path:
    return root / SOCKET_NAME


def parse_listen(text: str | None, root: Path) -> Listen:
    """`unix:PATH`, `HOST:PORT` or `[V6]:PORT`; None is the state root's Unix socket."""
    if not text:
        return Listen(path=default_socket(root))
    if text.startswith("unix:"):
        if not text[5:]:
            raise SpecError("--listen unix: needs a path, e.g. unix:/run/virtkit.sock")
        return Listen(path=Path(text[5:]).absolute())
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        raise SpecError(f"invalid --listen {text!r}", hint="use unix:PATH, HOST:PORT or [IPV6]:PORT")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise SpecError(f"invalid --listen address {host!r}: give an IP address",
                            hint="e.g. --listen 0.0.0.0:8443 or 127.0.0.1:8443") from None  # fmt: skip
    return Listen(host=host, port=int(port))


def unix_socket(path: Path) -> socket.socket:
    """A listening socket at `path`, mode 0660, group `virtkit` if it exists; an old one replaced
    only when nothing answers on it (another server would be cut off)."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConflictError(f"{path} exists and is not a socket", hint="remove it or --listen elsewhere")
        if _answers(path):
            raise ConflictError(f"a server already listens on {path}", hint="stop it first")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    with contextlib.suppress(KeyError):
        os.chown(path, 0, grp.getgrnam(GROUP).gr_gid)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def tcp_socket(listen: Listen) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets made with it, and without it
    # every answer's last segment waited ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as exc:
        sock.close()
        raise ConflictError(f"cannot listen on {listen}: {exc.strerror}",
                            hint="is another server on that port? choose another with --listen") from None
    sock.listen(128)
    return sock


def self_signed(root: Path, host: str) -> tuple[Path, Path]:
    """ROOT/server/server.crt and .key, made once with openssl for `host` (and localhost)."""
    directory = root / "server"
    cert, key = directory / "server.crt", directory / "server.key"
    if cert.exists() and key.exists():
        return cert, key
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    names = {"DNS:localhost", "IP:127.0.0.1", "IP:::1"}
    if host not in ("", "0.0.0.0", "::", "localhost"):
        names.add(f"IP:{host}")
    run_tool(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", str(CERT_DAYS), "-subj", f"/CN=virtkit {socket.gethostname()}",
         "-addext", "subjectAltName=" + ",".join(sorted(names)),
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-keyout", str(key), "-out", str(cert)],
        timeout=OPENSSL_TIMEOUT, what="making the server's self-signed certificate", package="openssl",
    )  # fmt: skip
    os.chmod(key, 0o600)
    return cert, key


def serve(root: Path, store: Store, listen: Listen, *, cert: Path | None = None,
          key: Path | None = None, on_ready: Callable[[str], None] | None = None,
          prune_every: float | None = None) -> None:  # fmt: skip
    """Serve until SIGINT/SIGTERM; `on_ready` hears where, once the socket accepts connections.
    `prune_every`: seconds between two runs of the snapshot timer (api/pruning.py; None: never)."""
    import uvicorn

    from virtkit.api.app import create_app

    if (cert is None) != (key is None):
        raise SpecError("--tls-cert and --tls-key go together")
    if listen.local and cert is not None:
        raise SpecError("--tls-cert is for a TCP listener; the Unix socket is protected by its mode")
    if not listen.local and cert is None:
        cert, key = self_signed(root, listen.host)
    for given in (cert, key):
        if given is not None and not given.is_file():
            raise SpecError(f"cannot read {given}", hint="give the PEM files of the certificate and its key")
    app = create_app(root, store, local=listen.local)
    stale = app.state.virtkit.operations.recover()
    if stale:
        log.warning("marked %d operation(s) of a previous server as failed", len(stale))
    from virtkit.ops.migratein import Incoming

    dropped = Incoming(root, store).discard_leftovers()
    if dropped:
        log.warning("discarded the instance(s) a live move had left arriving: %s", ", ".join(dropped))
    sock = unix_socket(listen.path) if listen.path is not None else tcp_socket(listen)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off",
        ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None,
        timeout_keep_alive=30, limit_concurrency=1000,
    )  # fmt: skip
    config.load()
    if config.ssl is not None:
        # No TLS 1.3 session tickets: sent after the handshake, they make a socket readable with
        # nothing for the application, and a client thread that select()s then recv()s blocks in
        # the middle of a record (the websockets sync client's reader does; its close cannot wake
        # it, and the console's connect then never returned). Nothing here resumes sessions.
        config.ssl.num_tickets = 0
    server = uvicorn.Server(config)
    from virtkit.api.pruning import PruneTimer

    timer = PruneTimer(root, store, prune_every) if prune_every else None
    if timer is not None:
        timer.start()
    if on_ready is not None:
        on_ready(f"listening on {listen}" + (f" (TLS certificate {cert})" if cert else ""))
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: these handlers
    # turn that into a return, so the socket is removed and the command exits 0.
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except _Stopped:
        log.info("server stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if timer is not None:
            timer.stop()
        sock.close()
        if listen.path is not None:
            with contextlib.suppress(FileNotFoundError):
                listen.path.unlink()


class _Stopped(Exception):
    pass


def _stop(_sig: int, _frame: object) -> None:
    raise _Stopped
