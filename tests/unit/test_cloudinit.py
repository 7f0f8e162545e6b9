"""cloud-init inputs and the NoCloud seed's files: what is accepted, what is refused and why, and
what the seed says (pure, but for the user's files in tmp_path)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from virtkit import cloudinit
from virtkit.cloudinit import (
    EMPTY_USER_DATA,
    SSH_KEYS,
    USER_DATA,
    USER_DATA_MAX,
    UserInput,
    check_user_data,
    describe_keys,
    meta_data,
    parse_public_keys,
    seed_files,
    take_inputs,
)
from virtkit.errors import SpecError

# Real keys, with the fingerprints `ssh-keygen -l` printed for them.
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHjGR4SSnOlVaFDWUHIQ+LiFIL/kkHKyr1HM6XPXg1YZ tester@host"
ED25519_FP = "SHA256:f6dq5QioNFx6lAuRRJ+UAkhqJzUyfFhC2jeIJ0dmSwQ"
ECDSA = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBH2VlKReqA229HQetzBgz0FXzO6Xt2z5"
    "GiNoiSw1q9dQog6EiZiLCxyM3ko6K4NECePrAzKsKDM27/jTdfTaPX0= e@x"
)
ECDSA_FP = "SHA256:gJBPPCXodCnA9jUF25MhCP5wESHTwHsHKCVhetZ7i7w"


@pytest.mark.parametrize(
    "data",
    [
        b"#cloud-config\nruncmd: [[touch, /x]]\n",
        b"#cloud-config\r\n{}\r\n",
        b"#!/bin/sh\necho hi\n",
        b"## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n",
        b"Content-Type: multipart/mixed; boundary=XYZ\n\n--XYZ--\n",
        "#cloud-config\nwrite_files: [{path: /etc/motd, content: 'héllo'}]\n".encode(),
    ],
)
def test_user_data_cloud_init_reads_is_passed_as_is(data: bytes) -> None:
    assert check_user_data(data, "ud") is data


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "is empty"),
        (b" \n\n", "is empty"),
        (b"\x1f\x8b\x08\x00rest", "gzip"),
        (b"#cloud-config\n\xff\xfe garbage", "not text (byte 14"),
        (b"#cloud-config\nkey: \x00\n", "NUL bytes"),
        (b"runcmd: [ls]\n", "starts with 'runcmd: [ls]'"),
        (b"# cloud-config\n", "cloud-init would ignore it"),
        (b"\xef\xbb\xbf#cloud-config\n", "cloud-init would ignore it"),  # a byte-order mark first
        (b"#cloud-config\n" + b"a" * USER_DATA_MAX, "bigger than 1MiB"),
    ],
)
def test_user_data_refused(data: bytes, says: str) -> None:
    with pytest.raises(SpecError, match="user-data ud") as caught:
        check_user_data(data, "ud")
    assert says in caught.value.message


def test_public_keys_parsed_normalised_and_checked() -> None:
    text = f"# my keys\n\n  {ED25519}  \n{ECDSA}\nssh-ed25519 {ED25519.split()[1]}\n"
    assert parse_public_keys(text, "k.pub") == [
        ED25519,
        ECDSA,
        f"ssh-ed25519 {ED25519.split()[1]}",
    ]
    described = describe_keys([ED25519, ECDSA])
    assert described == f"ssh-ed25519 {ED25519_FP} tester@host; ecdsa-sha2-nistp256 {ECDSA_FP} e@x"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "holds no public key"),
        ("# nothing\n", "holds no public key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----\n", "private key"),
        ("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----\n", "RFC 4716"),
        ("hello world\n", "k.pub line 1 is not an OpenSSH public key"),
        ("ssh-ed25519\n", "line 1 is not an OpenSSH public key"),
        ("ssh-dss AAAAB3NzaC1kc3M= x\n", "DSA keys are refused"),
        ("ssh-ed25519 not*base64 x\n", "not valid base64"),
        (f"ssh-rsa {ED25519.split()[1]} x\n", "not a ssh-rsa key"),
        ("ssh-ed25519 AAAA x\n", "not a ssh-ed25519 key"),
        (f'{ED25519}\nfrom="10.0.0.1" {ED25519}\n', "line 2 is not an OpenSSH public key"),
        (f"{ED25519}\x1b[31m\n", "control characters"),
    ],
)
def test_public_keys_refused(text: str, says: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_public_keys(text, "k.pub")
    assert says in caught.value.message and "k.pub" in caught.value.message


def test_take_inputs_reads_the_files_and_records_what_they_held(tmp_path: Path) -> None:
    ud = tmp_path / "ud.yaml"
    ud.write_bytes(b"#cloud-config\n{}\n")
    one, two = tmp_path / "one.pub", tmp_path / "two.pub"
    one.write_text(ED25519 + "\n")
    two.write_text(f"{ECDSA}\n{ED25519}\n")  # the same key twice is kept once
    config, given = take_inputs({"accel": "tcg", USER_DATA: str(ud), SSH_KEYS: f"{one}\n{two}"})
    assert given == UserInput(b"#cloud-config\n{}\n", (ED25519, ECDSA))
    assert config["accel"] == "tcg"
    assert config[USER_DATA].startswith("ud.yaml (17 bytes, sha256 ")
    assert str(tmp_path) not in config[USER_DATA]  # what the file held, not where it was
    assert config[SSH_KEYS] == describe_keys([ED25519, ECDSA])
    assert take_inputs({"accel": "tcg", USER_DATA: "", SSH_KEYS: ""}) == ({"accel": "tcg"}, UserInput())


@pytest.mark.parametrize(
    ("which", "make", "says"),
    [
        (USER_DATA, None, "does not exist"),
        (USER_DATA, "dir", "is not a regular file"),
        (USER_DATA, "fifo", "is not a regular file"),
        (USER_DATA, "huge", "bigger than 1MiB"),
        (SSH_KEYS, "binary", "is not text"),
        (SSH_KEYS, "huge", "bigger than 64KiB"),
        (SSH_KEYS, None, "does not exist"),
    ],
)
def test_take_inputs_refuses_unreadable_files(
    tmp_path: Path, which: str, make: str | None, says: str
) -> None:
    path = tmp_path / "input"
    if make == "dir":
        path.mkdir()
    elif make == "fifo":
        os.mkfifo(path)  # reading it would block: refused before opening
    elif make == "huge":
        path.write_bytes(b"#cloud-config\n" + b"#" * (2 * USER_DATA_MAX))
    elif make == "binary":
        path.write_bytes(b"\x00\xff\xfe\x01" * 64)
    with pytest.raises(SpecError) as caught:
        take_inputs({which: str(path)})
    assert says in caught.value.message and str(path) in caught.value.message


def test_meta_data_names_the_instance_and_its_keys() -> None:
    text = meta_data("5b0d2f7e-3c4a-4f1e-9a53-0d6c1e2b7f10", "d1", [ED25519])
    body = json.loads(text.split("\n", 1)[1])  # JSON after a YAML comment: what YAML reads too
    assert body == {
        "instance-id": "5b0d2f7e-3c4a-4f1e-9a53-0d6c1e2b7f10",
        "local-hostname": "d1",
        "public-keys": [ED25519],
    }
    assert "public-keys" not in meta_data("u", "d1")


def test_seed_files_pass_user_data_byte_for_byte() -> None:
    given = UserInput(b"#!/bin/sh\r\necho \xc3\xa9\n", (ECDSA,))
    files = seed_files("u-1", "web1", given)
    assert sorted(files) == ["meta-data", "user-data"]
    assert files["user-data"] == given.user_data
    assert ECDSA in files["meta-data"].decode()
    assert seed_files("u-1", "web1", UserInput())["user-data"] == EMPTY_USER_DATA
    assert EMPTY_USER_DATA.startswith(b"#cloud-config\n")


def test_saved_with_the_instance_privately_and_loaded_back(tmp_path: Path) -> None:
    cloudinit.save(UserInput(), tmp_path)
    assert not (tmp_path / "cloud-init").exists()  # nothing given, nothing kept
    assert cloudinit.load(tmp_path) == UserInput()
    given = UserInput(b"#cloud-config\n{}\n", (ED25519, ECDSA))
    cloudinit.save(given, tmp_path)
    assert cloudinit.load(tmp_path) == given
    assert (tmp_path / "cloud-init").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "cloud-init" / "user-data").stat().st_mode & 0o777 == 0o600


def test_wants_cloud_init() -> None:
    assert cloudinit.wants_cloud_init({USER_DATA: "ud.yaml (1 bytes)"})
    assert cloudinit.wants_cloud_init({SSH_KEYS: "ssh-ed25519 SHA256:x"})
    assert not cloudinit.wants_cloud_init({"accel": "tcg"})
