"""Remotes: the virtkit servers this CLI knows by name, kept in CONFIG_DIR/remotes.json.

    {"default": "local",
     "remotes": {"web": {"url": "https://10.0.0.5:8443", "token": "vkt_...", "certificate": true}}}

CONFIG_DIR is `$VIRTKIT_CONFIG_DIR`, else `~/.config/virtkit`. `local` is always there, cannot be
added or removed, and means this host's state root (no server at all). The file holds tokens: it is
mode 0600 in a 0700 directory and replaced atomically, so a crash leaves the old one or the new one.

An https remote's certificate is kept as CONFIG_DIR/servercerts/NAME.crt. Given with
`--certificate FILE`, it is a CA the server's certificate must chain to, for the URL's host name.
Fetched from the server and accepted by its SHA-256 fingerprint (`--accept-certificate`, as
`incus remote add` asks), it is pinned: that one certificate alone is trusted, whatever name the
URL uses. A server whose certificate the system's CAs vouch for needs neither. A remote is
saved only once it has answered `GET /1.0` with its token.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from virtkit.errors import ConflictError, NotFoundError, RemoteError, SpecError, StoreError
from virtkit.units import validate_name

if TYPE_CHECKING:
    from virtkit.api.client import Client

ENV = "VIRTKIT_CONFIG_DIR"
FILE = "remotes.json"
CERTS = "servercerts"
LOCAL = "local"
DEFAULT_PORT = 8443
PROBE_TIMEOUT = 10.0
PEM_HINT = "give a file starting with -----BEGIN CERTIFICATE-----"


def config_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    given = env.get(ENV)
    if given:
        return Path(given)
    return Path(env.get("HOME") or Path.home()) / ".config" / "virtkit"


@dataclass(frozen=True)
class Remote:
    """One server: where it is, the token to present, and the certificate to trust (https)."""

    name: str
    url: str
    token: str | None = None
    certificate: Path | None = None
    pinned: bool = False  # `certificate` is the server's own, accepted by its fingerprint

    def public(self) -> dict[str, Any]:
        """What `remote list --json` shows: never the token itself."""
        return {"name": self.name, "url": self.url, "token": self.token is not None,
                "certificate": str(self.certificate) if self.certificate else None,
                "pinned": self.pinned}  # fmt: skip


@dataclass
class Config:
    """The remotes of one config directory, and which is the default."""

    directory: Path
    default: str = LOCAL
    remotes: dict[str, Remote] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.directory / FILE

    def cert_path(self, name: str) -> Path:
        return self.directory / CERTS / f"{name}.crt"

    @classmethod
    def load(cls, directory: Path | None = None) -> Config:
        """The config in `directory` (default: config_dir()); an empty one when there is no file."""
        config = cls(directory or config_dir())
        try:
            text = config.path.read_text()
        except FileNotFoundError:
            return config
        except OSError as exc:
            raise StoreError(f"cannot read {config.path}: {exc.strerror}") from None
        try:
            document = json.loads(text)
            entries = document.get("remotes", {})
            if not isinstance(entries, dict):
                raise TypeError("its remotes are not an object")
            config.default = str(document.get("default") or LOCAL)
            for name, entry in entries.items():
                config.remotes[name] = config._entry(name, entry)
        except (ValueError, TypeError, AttributeError, KeyError, SpecError) as exc:
            raise StoreError(
                f"cannot read {config.path}: it is not a remotes file ({exc})",
                hint="fix it, or remove it (its remotes are then forgotten)",
            ) from None
        if config.default != LOCAL and config.default not in config.remotes:
            config.default = LOCAL
        return config

    def _entry(self, name: str, entry: dict[str, Any]) -> Remote:
        validate_name(name, what="remote name")
        cert = self.cert_path(name) if entry.get("certificate") else None
        token = entry.get("token")
        return Remote(name, str(entry["url"]), str(token) if token else None, cert, bool(entry.get("pinned")))

    def save(self) -> None:
        from virtkit.store.files import atomic_write

        document = {
            "default": self.default,
            "remotes": {
                name: {"url": r.url, "token": r.token, "certificate": r.certificate is not None,
                       "pinned": r.pinned}
                for name, r in sorted(self.remotes.items())
            },
        }  # fmt: skip
        _mkdir(self.directory)
        atomic_write(self.path, json.dumps(document, indent=2) + "\n", mode=0o600)

    def get(self, name: str) -> Remote:
        """The remote called `name` (not `local`, which has no entry)."""
        found = self.remotes.get(name)
        if found is None:
            raise NotFoundError(f"remote {name!r} not found",
                                hint="`virtkit remote list` shows them; `virtkit remote add` adds one")
        return found

    def names(self) -> list[str]:
        return [LOCAL, *sorted(self.remotes)]

    def check_new(self, name: str) -> None:
        validate_name(name, what="remote name")
        if name == LOCAL:
            raise SpecError("remote name 'local' is taken: it means this host", hint="choose another name")
        if name in self.remotes:
            raise ConflictError(f"remote {name!r} already exists",
                                hint=f"remove it first: virtkit remote remove {name}")  # fmt: skip

    def remove(self, name: str) -> Remote:
        """Forget a remote (and its certificate); the default goes back to `local` if it was it."""
        if name == LOCAL:
            raise SpecError("remote 'local' is this host: it cannot be removed")
        removed = self.get(name)
        del self.remotes[name]
        if self.default == name:
            self.default = LOCAL
        self.save()
        if removed.certificate is not None:
            removed.certificate.unlink(missing_ok=True)
        return removed

    def switch(self, name: str) -> None:
        if name != LOCAL:
            self.get(name)
        self.default = name
        self.save()


def _mkdir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot make {directory}: {exc.strerror}",
                         hint=f"set ${ENV} to a directory you can write") from None  # fmt: skip


def parse_url(url: str) -> str:
    """`unix:PATH` (made absolute) or `https://HOST[:PORT]` (port 8443 when none), normalised."""
    if url.startswith("unix:"):
        path = url[5:].removeprefix("//")
        if not path:
            raise SpecError("invalid remote URL 'unix:': it needs the socket's path",
                            hint="e.g. unix:/var/lib/virtkit/unix.socket")  # fmt: skip
        return f"unix:{Path(path).absolute()}"
    shown = url[:80]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SpecError(f"invalid remote URL {shown!r}", hint="use https://HOST:PORT or unix:PATH") from None
    if parts.scheme == "http":
        raise SpecError(f"invalid remote URL {shown!r}: a virtkit server speaks TLS over TCP",
                        hint="use https://" + url[7:][:60])  # fmt: skip
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise SpecError(f"invalid remote URL {shown!r}", hint="use https://HOST:PORT or unix:PATH")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}:{port or DEFAULT_PORT}"


def split_target(text: str) -> tuple[str | None, str]:
    """`web:c1` -> ("web", "c1"); `c1` -> (None, "c1"), as Incus addresses instances."""
    remote, sep, name = text.partition(":")
    if not sep:
        return None, text
    return validate_name(remote, what="remote name"), name


def fetch_certificate(url: str, timeout: float = PROBE_TIMEOUT) -> str:
    """The PEM certificate the https server at `url` presents (not verified: that is the point)."""
    import ssl

    parts = urlsplit(url)
    address = (parts.hostname or "", parts.port or DEFAULT_PORT)
    try:
        return ssl.get_server_certificate(address, timeout=timeout)
    except ssl.SSLError as exc:
        raise RemoteError(f"{url} does not speak TLS as a virtkit server does: {exc.reason or exc}",
                          hint="check the URL's port; `virtkit serve --listen HOST:PORT` there") from None
    except OSError as exc:
        raise RemoteError(f"cannot reach {url}: {exc.strerror or exc}",
                          hint="is `virtkit serve --listen HOST:PORT` running there?") from None  # fmt: skip


def _publicly_trusted(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the server's certificate verifies for its name against the system's CAs (then
    nothing needs pinning, as a browser would trust it)."""
    import socket
    import ssl

    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        with socket.create_connection((host, parts.port or DEFAULT_PORT), timeout=timeout) as sock, \
                ssl.create_default_context().wrap_socket(sock, server_hostname=host):  # fmt: skip
            return True
    except ssl.SSLError:  # not trusted, or not TLS at all: fetch_certificate says which
        return False
    except OSError as exc:
        raise RemoteError(f"cannot reach {url}: {exc.strerror or exc}",
                          hint="is `virtkit serve --listen HOST:PORT` running there?") from None  # fmt: skip


def fingerprint(pem: str) -> str:
    """SHA-256 of the certificate as `openssl x509 -noout -fingerprint -sha256` writes it."""
    import ssl

    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except ValueError:
        raise SpecError("not a PEM certificate", hint=PEM_HINT) from None
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def connect(remote: Remote, timeout: float | None = None) -> Client:
    from virtkit.api.client import DEFAULT_TIMEOUT, Client

    return Client(remote.url, token=remote.token, certificate=remote.certificate, pinned=remote.pinned,
                  timeout=DEFAULT_TIMEOUT if timeout is None else timeout)  # fmt: skip


@dataclass(frozen=True)
class Added:
    """A remote just saved: its entry, its certificate's fingerprint (https), what it answered."""

    remote: Remote
    fingerprint: str | None
    info: dict[str, Any]


def add(config: Config, name: str, url: str, *, token: str | None = None, certificate: Path | None = None,
        accept: bool = False) -> Added:  # fmt: skip
    """Check `name` is free, trust the server's certificate (given, or fetched and `accept`ed),
    check the server answers `GET /1.0` with `token`, then save; on any failure nothing is saved."""
    import tempfile

    config.check_new(name)
    url = parse_url(url)
    if certificate is not None and accept:
        raise SpecError(
            "--certificate and --accept-certificate exclude each other",
            hint="--certificate trusts a file you have; --accept-certificate the one the server shows",
        )
    pem, pinned = None, False
    if url.startswith("unix:"):
        if certificate is not None or accept:
            raise SpecError("a Unix socket remote has no certificate",
                            hint="drop --certificate and --accept-certificate")  # fmt: skip
    elif certificate is not None:
        pem = _read_pem(certificate)
    elif not _publicly_trusted(url):
        pem, pinned = fetch_certificate(url), True
        if not accept:
            raise RemoteError(
                f"the certificate of {url} is not trusted yet; its SHA-256 fingerprint is {fingerprint(pem)}",
                hint="compare it with the server's (`openssl x509 -noout -fingerprint -sha256 -in "
                "ROOT/server/server.crt` there), then add --accept-certificate; or give --certificate FILE",
            )
    shown = fingerprint(pem) if pem is not None else None
    with tempfile.TemporaryDirectory(prefix="virtkit-remote-") as scratch:
        trial = None
        if pem is not None:
            trial = Path(scratch) / "server.crt"
            trial.write_text(pem)
        with connect(Remote(name, url, token, trial, pinned), timeout=PROBE_TIMEOUT) as client:
            info = client.info()
    remote = Remote(name, url, token, config.cert_path(name) if pem is not None else None, pinned)
    if pem is not None:
        from virtkit.store.files import atomic_write

        _mkdir(config.directory / CERTS)
        atomic_write(config.cert_path(name), pem, mode=0o600)
    config.remotes[name] = remote
    try:
        config.save()
    except BaseException:
        config.remotes.pop(name, None)
        config.cert_path(name).unlink(missing_ok=True)
        raise
    return Added(remote, shown, info)


def _read_pem(path: Path) -> str:
    try:
        pem = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise SpecError(f"cannot read the certificate {path}: {reason}") from None
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise SpecError(f"{path} is not a PEM certificate", hint=PEM_HINT)
    return pem
