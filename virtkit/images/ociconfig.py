"""OCI and Docker image JSON documents, checked: descriptors, media types, the image config.

Everything here is parsed from untrusted archives, so every field is type-checked and anything
malformed is a RejectedError naming the document. Architectures are translated from OCI's names
(amd64, arm64) to the ones virtkit uses everywhere, as `uname -m` prints them (x86_64, aarch64).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from virtkit.errors import RejectedError

_OCI = "application/vnd.oci.image"
_DOCKER = "application/vnd.docker"
INDEX_TYPES = frozenset({f"{_OCI}.index.v1+json", f"{_DOCKER}.distribution.manifest.list.v2+json"})
MANIFEST_TYPES = frozenset({f"{_OCI}.manifest.v1+json", f"{_DOCKER}.distribution.manifest.v2+json"})
LAYER_TYPES = frozenset(
    {
        *(f"{_OCI}.layer.v1.tar{suffix}" for suffix in ("", "+gzip", "+zstd")),
        *(f"{_OCI}.layer.nondistributable.v1.tar{suffix}" for suffix in ("", "+gzip", "+zstd")),
        f"{_DOCKER}.image.rootfs.diff.tar.gzip",
        f"{_DOCKER}.image.rootfs.foreign.diff.tar.gzip",
        f"{_DOCKER}.image.rootfs.diff.tar",
    }
)
REF_NAME = "org.opencontainers.image.ref.name"
_DIGEST_RE = re.compile(r"(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})", re.ASCII)
_FROM_OCI = {"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "mips64le": "mips64el"}
_TO_OCI = {arch: oci for oci, arch in _FROM_OCI.items()} | {"armv7l": "arm", "armv6l": "arm"}


def arch_from_oci(arch: str, variant: str | None = None) -> str:
    """virtkit's name for OCI architecture `arch` (amd64 -> x86_64, arm64 -> aarch64, arm v7 -> armv7l)."""
    if arch == "arm":
        return f"arm{variant or 'v7'}l"
    return _FROM_OCI.get(arch, arch)


def arch_to_oci(arch: str) -> str:
    return _TO_OCI.get(arch, arch)


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: its media type, digest ("sha256:<hex>") and size."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, str] = field(default_factory=dict)


def check_digest(digest: object, where: str) -> str:
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise RejectedError(f"{where} has an invalid digest {str(digest)[:80]!r}")
    return digest


def descriptor(value: object, where: str) -> Descriptor:
    """A descriptor parsed from JSON `value`, refused unless well-formed."""
    doc = mapping(value, where)
    size = doc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RejectedError(f"{where} has an invalid size {size!r}")
    return Descriptor(
        media_type=text(doc, "mediaType", where),
        digest=check_digest(doc.get("digest"), where),
        size=size,
        annotations=strings(doc.get("annotations"), where),
        platform=strings(doc.get("platform"), where, loose=True),
    )


def mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RejectedError(f"{where} is not a JSON object")
    return value


def text(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key) or ""
    if not isinstance(value, str):
        raise RejectedError(f"{where}: {key} is not a string")
    return value


def strings(value: object, where: str, loose: bool = False) -> dict[str, str]:
    """A JSON object of strings (None is empty); `loose` drops non-string values instead."""
    if value is None:
        return {}
    doc = mapping(value, where)
    if not loose and not all(isinstance(v, str) for v in doc.values()):
        raise RejectedError(f"{where} holds a non-string value where strings are expected")
    return {str(k): v for k, v in doc.items() if isinstance(v, str)}


def string_list(doc: dict[str, Any], key: str, where: str) -> list[str]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RejectedError(f"{where}: {key} is not a list of strings")
    return value


def container_config(config: object, where: str) -> dict[str, Any]:
    """The run settings of image config `config`: entrypoint, cmd, env, workdir, user, ports,
    labels, stop_signal (empty when the image does not set them)."""
    doc = mapping(config, where)
    run = doc.get("config") or {}
    run = mapping(run, f"{where}: config")
    env = string_list(run, "Env", where)
    if any("=" not in item for item in env):
        raise RejectedError(f"{where}: Env holds an entry without '='")
    ports = run.get("ExposedPorts") or {}
    return {
        "entrypoint": string_list(run, "Entrypoint", where),
        "cmd": string_list(run, "Cmd", where),
        "env": env,
        "workdir": text(run, "WorkingDir", where),
        "user": text(run, "User", where),
        "ports": sorted(mapping(ports, f"{where}: ExposedPorts")),
        "labels": strings(run.get("Labels"), f"{where}: Labels"),
        "stop_signal": text(run, "StopSignal", where),
    }


def config_platform(config: object, where: str) -> tuple[str, str]:
    """(virtkit architecture, os) of image config `config`; a missing os counts as linux."""
    doc = mapping(config, where)
    arch = text(doc, "architecture", where)
    if not arch:
        raise RejectedError(f"{where} does not say its architecture")
    return arch_from_oci(arch, text(doc, "variant", where) or None), text(doc, "os", where) or "linux"


def diff_ids(config: object, where: str) -> list[str]:
    """The digests of the uncompressed layers the config lists (rootfs.diff_ids)."""
    rootfs = mapping(mapping(config, where).get("rootfs") or {}, f"{where}: rootfs")
    return [
        check_digest(item, f"{where}: rootfs.diff_ids") for item in string_list(rootfs, "diff_ids", where)
    ]
