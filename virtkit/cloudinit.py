"""Cloud-init instance data for the NoCloud datasource: the user's inputs, checked, and the seed's files.

A user gives `--user-data FILE` (a cloud-config or a script, passed to the guest as is) and
`--ssh-key FILE` (OpenSSH public keys, authorized for the image's default user). At create time
`take_inputs` reads and checks those files, ops `save`s what they held under the instance
directory (the user's files are never read again) and the VM driver `load`s it to make the seed:

    meta-data   instance-id (the instance UUID), local-hostname (its name), public-keys
    user-data   the user's file byte for byte, or an empty cloud-config

The seed's own format (an ISO9660 volume labelled `cidata`) is the driver's business.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from virtkit.errors import SpecError
from virtkit.store import atomic_write
from virtkit.units import KiB, MiB, format_size

USER_DATA = "user_data"  # record.config keys: the files' paths on the way in, what they held after
SSH_KEYS = "ssh_keys"  # several paths, one a line
INPUT_DIR = "cloud-init"  # under the instance directory
USER_DATA_FILE = "user-data"
SSH_KEYS_FILE = "ssh-keys"
USER_DATA_MAX = 1 * MiB  # far beyond any real cloud-config; an ISO seed could hold more, a typo not
KEYS_FILE_MAX = 64 * KiB
KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)  # fmt: skip
# What cloud-init takes as user-data (besides these, it would ignore the file with a warning).
USER_DATA_STARTS = ("#cloud-config", "#!", "## template: jinja", "Content-Type: multipart/")
EMPTY_USER_DATA = b"#cloud-config\n# virtkit: no --user-data was given\n{}\n"


@dataclass(frozen=True)
class UserInput:
    """What the user gave for cloud-init: user-data bytes (None: none given) and public key lines."""

    user_data: bytes | None = None
    ssh_keys: tuple[str, ...] = ()


# --- checking ---------------------------------------------------------------------------------


def check_user_data(data: bytes, source: str) -> bytes:
    """`data` if cloud-init can take it as user-data; SpecError saying what is wrong otherwise."""
    formats = "#cloud-config (a cloud-config) or #! (a script)"
    if len(data) > USER_DATA_MAX:
        raise SpecError(
            f"user-data {source} is bigger than {format_size(USER_DATA_MAX)}",
            hint="keep big files out of user-data: fetch them from the guest instead",
        )
    if not data.strip():
        raise SpecError(f"user-data {source} is empty", hint=f"it must start with {formats}")
    if data.startswith(b"\x1f\x8b"):
        raise SpecError(f"user-data {source} is gzip-compressed", hint="give it uncompressed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"user-data {source} is not text (byte {exc.start} is not UTF-8)",
            hint=f"user-data starts with {formats}",
        ) from None
    if "\0" in text:
        raise SpecError(
            f"user-data {source} holds NUL bytes: it is binary, not text",
            hint=f"user-data starts with {formats}",
        )
    if not text.startswith(USER_DATA_STARTS):
        first = text.splitlines()[0][:40] if text.splitlines() else ""
        raise SpecError(
            f"user-data {source} starts with {first!r}: cloud-init would ignore it",
            hint=f"start it with {formats}",
        )
    return data


def fingerprint(blob: bytes) -> str:
    """The key's fingerprint as `ssh-keygen -l` shows it (SHA256:base64, no padding)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _key_blob(key_type: str, encoded: str, where: str) -> bytes:
    """The key's wire-format blob, checked to name the same type as the line does."""
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SpecError(f"{where}: the key is not valid base64") from None
    size = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if size < 0 or blob[4 : 4 + size] != key_type.encode():
        raise SpecError(f"{where}: the key's data is not a {key_type} key (damaged or cut short?)")
    return blob


def parse_public_keys(text: str, source: str) -> list[str]:
    """The OpenSSH public keys in `text` (one a line, `TYPE BASE64 [COMMENT]`), normalised; SpecError
    naming the line that is not one."""
    if "PRIVATE KEY-----" in text:
        raise SpecError(
            f"{source} is a private key: never hand it out",
            hint=f"give its public half instead (ssh-keygen -y -f {source})",
        )
    if text.lstrip().startswith("---- BEGIN SSH2 PUBLIC KEY"):
        raise SpecError(
            f"{source} is an SSH2 (RFC 4716) public key, not an OpenSSH one",
            hint=f"convert it: ssh-keygen -i -f {source}",
        )
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        if any(ord(char) < 32 and char != "\t" for char in line):
            raise SpecError(f"{where} holds control characters: not a public key")
        fields = line.split(None, 2)
        if fields[0] == "ssh-dss":
            raise SpecError(
                f"{where}: DSA keys are refused by the guest's OpenSSH",
                hint="make an ed25519 key: ssh-keygen -t ed25519",
            )
        if fields[0] not in KEY_TYPES or len(fields) < 2:
            raise SpecError(
                f"{where} is not an OpenSSH public key (TYPE BASE64 [COMMENT])",
                hint="give a .pub file, as ssh-keygen makes it (e.g. ~/.ssh/id_ed25519.pub)",
            )
        _key_blob(fields[0], fields[1], where)
        keys.append(" ".join(fields))
    if not keys:
        raise SpecError(f"{source} holds no public key", hint="give a .pub file made by ssh-keygen")
    return keys


def describe_keys(keys: Sequence[str]) -> str:
    """The keys as `show` lists them: type, fingerprint and comment of each."""
    described = []
    for key in keys:
        fields = key.split(None, 2)
        blob = base64.b64decode(fields[1])
        described.append(" ".join([fields[0], fingerprint(blob), *fields[2:]]))
    return "; ".join(described)


# --- reading the user's files -----------------------------------------------------------------


def read_user_file(path: Path, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; SpecError when it cannot be read."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(f"{what} {path} is not a regular file")
        if info.st_size > limit:
            raise SpecError(
                f"{what} {path} is bigger than {format_size(limit)}",
                hint=f"{what} files are small text files",
            )
        with path.open("rb") as handle:
            data = handle.read(limit + 1)  # the file may grow between stat and read
    except FileNotFoundError:
        raise SpecError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise SpecError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise SpecError(f"{what} {path} is bigger than {format_size(limit)}")
    return data


def take_inputs(config: dict[str, str]) -> tuple[dict[str, str], UserInput]:
    """Read and check the files `config` names (USER_DATA, SSH_KEYS: paths); the config to record,
    which says what they held instead of where they were, and their contents."""
    config = dict(config)
    user_data = None
    keys: list[str] = []
    if config.get(USER_DATA):
        path = Path(config[USER_DATA])
        user_data = check_user_data(read_user_file(path, "user-data file", USER_DATA_MAX), str(path))
        digest = hashlib.sha256(user_data).hexdigest()[:16]
        config[USER_DATA] = f"{path.name} ({len(user_data)} bytes, sha256 {digest})"
    if config.get(SSH_KEYS):
        for name in config[SSH_KEYS].split("\n"):
            data = read_user_file(Path(name), "SSH public key file", KEYS_FILE_MAX)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise SpecError(
                    f"{name} is not text: not an OpenSSH public key",
                    hint="give a .pub file made by ssh-keygen",
                ) from None
            keys += [key for key in parse_public_keys(text, name) if key not in keys]
        config[SSH_KEYS] = describe_keys(keys)
    for key in (USER_DATA, SSH_KEYS):
        if not config.get(key):
            config.pop(key, None)
    return config, UserInput(user_data, tuple(keys))


# --- kept with the instance -------------------------------------------------------------------


def save(given: UserInput, instance_dir: Path) -> None:
    """Keep the user's inputs under the instance directory (private: user-data may hold secrets)."""
    if given.user_data is None and not given.ssh_keys:
        return
    directory = instance_dir / INPUT_DIR
    directory.mkdir(mode=0o700)
    if given.user_data is not None:
        atomic_write(directory / USER_DATA_FILE, given.user_data, mode=0o600)
    if given.ssh_keys:
        atomic_write(directory / SSH_KEYS_FILE, "".join(f"{key}\n" for key in given.ssh_keys), mode=0o600)


def load(instance_dir: Path) -> UserInput:
    """What `save` kept (nothing given: an empty UserInput)."""
    directory = instance_dir / INPUT_DIR
    user_data = directory / USER_DATA_FILE
    keys = directory / SSH_KEYS_FILE
    return UserInput(
        user_data=user_data.read_bytes() if user_data.exists() else None,
        ssh_keys=tuple(keys.read_text().splitlines()) if keys.exists() else (),
    )


# --- the seed's files (pure) ------------------------------------------------------------------


def meta_data(instance_id: str, hostname: str, keys: Sequence[str] = ()) -> str:
    """NoCloud meta-data, written as JSON (which YAML reads) so no value can break its syntax."""
    data: dict[str, object] = {"instance-id": instance_id, "local-hostname": hostname}
    if keys:
        data["public-keys"] = list(keys)  # cloud-init authorizes them for the default user
    return "# virtkit: NoCloud meta-data\n" + json.dumps(data, indent=2) + "\n"


def seed_files(instance_id: str, hostname: str, given: UserInput) -> dict[str, bytes]:
    """The files of a NoCloud seed, by name."""
    return {
        "meta-data": meta_data(instance_id, hostname, given.ssh_keys).encode(),
        "user-data": given.user_data if given.user_data is not None else EMPTY_USER_DATA,
    }


def wants_cloud_init(config: dict[str, str]) -> bool:
    """Whether the instance was given cloud-init inputs (which its image must then read)."""
    return bool(config.get(USER_DATA) or config.get(SSH_KEYS))
