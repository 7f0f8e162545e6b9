"""api/remotes.py: the remotes file (mode, atomic replacement, bad contents), names, URLs, addressing."""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
from pathlib import Path

import pytest

from virtkit.api import remotes
from virtkit.api.remotes import LOCAL, Config, Remote
from virtkit.errors import ConflictError, NotFoundError, RemoteError, SpecError, StoreError


def _saved(config: Config, *entries: Remote) -> Config:
    for entry in entries:
        config.remotes[entry.name] = entry
    config.save()
    return Config.load(config.directory)


def test_no_file_is_local_only(tmp_path: Path) -> None:
    config = Config.load(tmp_path / "none")
    assert (config.default, config.remotes, config.names()) == (LOCAL, {}, [LOCAL])
    assert not (tmp_path / "none").exists()  # reading makes nothing


def test_config_dir_from_env_or_home() -> None:
    assert remotes.config_dir({"VIRTKIT_CONFIG_DIR": "/x/y"}) == Path("/x/y")
    assert remotes.config_dir({"HOME": "/home/ann"}) == Path("/home/ann/.config/virtkit")


def test_saved_and_read_back_private_and_atomic(tmp_path: Path) -> None:
    directory = tmp_path / "cfg"
    config = Config(directory)
    web = Remote("web", "https://10.0.0.5:8443", "vkt_secret", config.cert_path("web"), pinned=True)
    sock = Remote("sock", "unix:/run/v.sock")
    again = _saved(config, web, sock)
    assert again.remotes == {"web": web, "sock": sock}
    assert (directory / "remotes.json").stat().st_mode & 0o777 == 0o600
    assert directory.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in directory.iterdir()] == ["remotes.json"]  # no temporary file left
    document = json.loads((directory / "remotes.json").read_text())
    assert document["remotes"]["web"] == {"url": "https://10.0.0.5:8443", "token": "vkt_secret",
                                          "certificate": True, "pinned": True}  # fmt: skip
    assert web.public()["token"] is True and "vkt_secret" not in json.dumps(web.public())


def test_switch_and_remove_keep_the_default_sane(tmp_path: Path) -> None:
    config = _saved(Config(tmp_path), Remote("web", "unix:/a"), Remote("db", "unix:/b"))
    config.switch("web")
    assert Config.load(tmp_path).default == "web"
    with pytest.raises(NotFoundError, match="remote 'nope' not found"):
        config.switch("nope")
    config.switch(LOCAL)
    assert Config.load(tmp_path).default == LOCAL
    config.switch("db")
    cert = config.cert_path("db")
    cert.parent.mkdir()
    cert.write_text("pem")
    config.remotes["db"] = Remote("db", "unix:/b", certificate=cert)
    config.remove("db")
    again = Config.load(tmp_path)
    assert (again.default, sorted(again.remotes)) == (LOCAL, ["web"])
    assert not cert.exists()
    with pytest.raises(SpecError, match="cannot be removed"):
        config.remove(LOCAL)
    with pytest.raises(NotFoundError):
        config.remove("db")


def test_a_default_that_is_gone_means_local(tmp_path: Path) -> None:
    (tmp_path / "remotes.json").write_text(json.dumps({"default": "gone", "remotes": {}}))
    assert Config.load(tmp_path).default == LOCAL


@pytest.mark.parametrize("text", ["{", "[]", '{"remotes": {"Bad_Name": {"url": "unix:/a"}}}',
                                  '{"remotes": {"web": {}}}', '{"remotes": []}'])  # fmt: skip
def test_a_broken_file_is_said_clearly(tmp_path: Path, text: str) -> None:
    (tmp_path / "remotes.json").write_text(text)
    with pytest.raises(StoreError, match=r"remotes\.json") as caught:
        Config.load(tmp_path)
    assert caught.value.hint is not None and "remove it" in caught.value.hint


def test_new_names_are_checked(tmp_path: Path) -> None:
    config = _saved(Config(tmp_path), Remote("web", "unix:/a"))
    with pytest.raises(SpecError, match="'local' is taken"):
        config.check_new(LOCAL)
    with pytest.raises(ConflictError, match="already exists"):
        config.check_new("web")
    with pytest.raises(SpecError, match="invalid remote name"):
        config.check_new("Web_1")
    config.check_new("db")


@pytest.mark.parametrize(("given", "url"), [
    ("https://host", "https://host:8443"),
    ("https://10.0.0.5:9443/", "https://10.0.0.5:9443"),
    ("https://[::1]:8443", "https://[::1]:8443"),
    ("unix:/run/v.sock", "unix:/run/v.sock"),
    ("unix:///run/v.sock", "unix:/run/v.sock"),
])  # fmt: skip
def test_urls(given: str, url: str) -> None:
    assert remotes.parse_url(given) == url


def test_a_relative_socket_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert remotes.parse_url("unix:v.sock") == f"unix:{tmp_path / 'v.sock'}"


@pytest.mark.parametrize(("given", "said"), [
    ("http://host:8443", "speaks TLS"), ("ftp://host", "invalid remote URL"), ("host:8443", "invalid"),
    ("https://host:99999", "invalid"), ("https://host/path", "invalid"), ("unix:", "socket's path"),
    ("https://", "invalid"),
])  # fmt: skip
def test_bad_urls(given: str, said: str) -> None:
    with pytest.raises(SpecError, match=said):
        remotes.parse_url(given)


def test_split_target() -> None:
    assert remotes.split_target("c1") == (None, "c1")
    assert remotes.split_target("web:c1") == ("web", "c1")
    assert remotes.split_target("web:") == ("web", "")  # the empty name is refused as a name
    with pytest.raises(SpecError, match="invalid remote name"):
        remotes.split_target("Web:c1")
    with pytest.raises(SpecError, match="invalid remote name"):
        remotes.split_target(":c1")


def _cert(tmp_path: Path) -> Path:
    cert = tmp_path / "c.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=t", "-keyout", str(tmp_path / "c.key"),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)  # fmt: skip
    return cert


def test_fingerprint_is_openssls(tmp_path: Path) -> None:
    cert = _cert(tmp_path)
    said = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
                          check=True, capture_output=True, text=True).stdout  # fmt: skip
    pem = cert.read_text()
    assert said.strip().split("=", 1)[1] == remotes.fingerprint(pem)
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    assert remotes.fingerprint(pem).replace(":", "").lower() == digest
    with pytest.raises(SpecError, match="not a PEM certificate"):
        remotes.fingerprint("junk")


def test_add_refuses_before_contacting_anything(tmp_path: Path) -> None:
    config = Config(tmp_path / "cfg")
    cert = _cert(tmp_path)
    with pytest.raises(SpecError, match="exclude each other"):
        remotes.add(config, "web", "https://h", certificate=cert, accept=True)
    with pytest.raises(SpecError, match="Unix socket remote has no certificate"):
        remotes.add(config, "web", "unix:/x", accept=True)
    (tmp_path / "junk.crt").write_text("junk")
    with pytest.raises(SpecError, match="not a PEM certificate"):
        remotes.add(config, "web", "https://127.0.0.1:1", certificate=tmp_path / "junk.crt")
    with pytest.raises(SpecError, match="cannot read the certificate"):
        remotes.add(config, "web", "https://127.0.0.1:1", certificate=tmp_path / "none.crt")
    assert not (tmp_path / "cfg").exists()


def test_add_of_an_unreachable_server_saves_nothing(tmp_path: Path) -> None:
    config = Config(tmp_path / "cfg")
    with pytest.raises(RemoteError, match="cannot reach"):
        remotes.add(config, "web", f"unix:{tmp_path / 'none.sock'}")
    with pytest.raises(RemoteError, match="cannot reach"):
        remotes.add(config, "web", "https://127.0.0.1:1", certificate=_cert(tmp_path))
    with pytest.raises(RemoteError, match=r"cannot reach https://127\.0\.0\.1:1"):
        remotes.add(config, "web", "https://127.0.0.1:1", accept=True)
    assert config.remotes == {} and not (tmp_path / "cfg").exists()
