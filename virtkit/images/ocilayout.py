"""The images inside an OCI image layout or a `docker save` tree, every blob checked before use.

An OCI layout has ``oci-layout``, ``index.json`` (possibly pointing at nested indexes, one per
multi-arch image) and ``blobs/<alg>/<hex>``. A docker-save archive has ``manifest.json`` listing,
per image, its ``Config`` file, ``RepoTags`` and ``Layers`` (``<id>/layer.tar`` in older Dockers,
``blobs/sha256/<hex>`` since Docker 25). Every blob is hashed and compared with its digest: the
descriptor's in an OCI layout; in a docker archive the one its file name carries, or for a legacy
``<id>/layer.tar`` the layer's diff_id from the config. Paths resolve inside the tree only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from virtkit.errors import RejectedError
from virtkit.images.ociconfig import (
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    REF_NAME,
    Descriptor,
    arch_from_oci,
    descriptor,
    diff_ids,
    mapping,
    string_list,
    text,
)
from virtkit.storage import resolve_in_root
from virtkit.units import MiB

OCI, DOCKER = "oci", "docker-archive"
MAX_JSON = 16 * MiB
_MAX_NESTING = 4
_NAMED_BLOB = re.compile(r"(?:.*/)?blobs/(sha256|sha512)/([0-9a-f]+)|([0-9a-f]{64})\.(?:json|tar)", re.ASCII)


@dataclass(frozen=True)
class Layer:
    path: str  # inside the layout
    digest: str
    size: int | None  # None when only the digest is known (docker archives)
    media_type: str = ""


@dataclass
class Image:
    config: dict[str, Any]
    config_digest: str
    layers: list[Layer]


@dataclass
class Choice:
    """One image of the layout, as the index lists it; `load` reads and checks its manifest."""

    refs: list[str]
    load: Callable[[], Image]
    arch: str | None = None  # virtkit's name, when the index says
    os: str | None = None
    _image: Image | None = field(default=None, repr=False)

    def image(self) -> Image:
        if self._image is None:
            self._image = self.load()
        return self._image


class Layout:
    """An unpacked OCI layout or docker-save tree at `root`; `label` names it in messages."""

    def __init__(self, root: Path, label: str) -> None:
        self.root, self.label = root, label
        if self._exists("manifest.json"):
            self.format = DOCKER
        elif self._exists("index.json") or self._exists("oci-layout"):
            self.format = OCI
        else:
            raise RejectedError(
                f"{label} is neither an OCI image layout (oci-layout, index.json) "
                "nor a docker save archive (manifest.json)"
            )

    def _exists(self, rel: str) -> bool:
        real = resolve_in_root(self.root, rel)
        return real is not None and real.is_file()

    def choices(self) -> list[Choice]:
        if self.format == DOCKER:
            return self._docker_choices()
        version = mapping(self.json_file("oci-layout", "OCI layout marker"), f"oci-layout of {self.label}")
        if not text(version, "imageLayoutVersion", "oci-layout"):
            raise RejectedError(f"oci-layout of {self.label} does not give an imageLayoutVersion")
        return self._flatten(self.json_file("index.json", "index"), "index.json", None, 0)

    # -- blobs ------------------------------------------------------------------------------------

    def locate(self, rel: str, what: str) -> Path:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise RejectedError(f"{what} path {rel!r} in {self.label} points outside the archive")
        real = resolve_in_root(self.root, rel)
        if real is None or not real.is_file():
            raise RejectedError(f"{what} {rel} is missing from {self.label}")
        return real

    def verified(self, rel: str, digest: str, size: int | None, what: str) -> Path:
        """The path of blob `rel`, once its size and content match `size` and `digest`."""
        path = self.locate(rel, what)
        self._check_size(path.stat().st_size, digest, size, what)
        algorithm = digest.split(":")[0]
        with path.open("rb") as blob:
            found = hashlib.file_digest(blob, algorithm).hexdigest()
        self._check_hash(found, digest, what)
        return path

    def _check_size(self, actual: int, digest: str, size: int | None, what: str) -> None:
        if size is not None and actual != size:
            raise RejectedError(f"blob {digest} ({what}) in {self.label} has {actual} bytes, not {size}")

    def _check_hash(self, found: str, digest: str, what: str) -> None:
        algorithm, expected = digest.split(":")
        if found != expected:
            raise RejectedError(
                f"blob {digest} ({what}) in {self.label} does not match its digest "
                f"(its content hashes to {algorithm}:{found[:16]}...)",
                hint="the archive is damaged or was tampered with; get it again",
            )

    def json_file(self, rel: str, what: str, digest: str | None = None, size: int | None = None) -> Any:
        """The parsed JSON file `rel`, checked against `digest` and `size` when given."""
        path = self.locate(rel, what)
        actual = path.stat().st_size
        if actual > MAX_JSON:
            raise RejectedError(
                f"{what} {rel} in {self.label} is too large ({actual} bytes) for a JSON document"
            )
        data = path.read_bytes()
        if digest is not None:
            self._check_size(len(data), digest, size, what)
            algorithm = digest.split(":")[0]
            self._check_hash(hashlib.new(algorithm, data).hexdigest(), digest, what)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise RejectedError(f"{what} {rel} in {self.label} is not valid JSON: {exc}") from None

    def json_blob(self, desc: Descriptor, what: str) -> Any:
        return self.json_file(_blob_path(desc.digest), what, desc.digest, desc.size)

    # -- OCI --------------------------------------------------------------------------------------

    def _flatten(self, index: object, where: str, ref: str | None, depth: int) -> list[Choice]:
        listed = mapping(index, where).get("manifests")
        if not isinstance(listed, list):
            raise RejectedError(f"{where} of {self.label} has no list of manifests")
        found: list[Choice] = []
        for number, item in enumerate(listed):
            desc = descriptor(item, f"{where} of {self.label}: manifests[{number}]")
            name = desc.annotations.get(REF_NAME) or ref
            if desc.media_type in INDEX_TYPES:
                if depth >= _MAX_NESTING:
                    raise RejectedError(f"{self.label} nests image indexes more than {_MAX_NESTING} deep")
                nested = self.json_blob(desc, "image index")
                found += self._flatten(nested, f"index {desc.digest[:19]}", name, depth + 1)
            elif desc.media_type in MANIFEST_TYPES:
                arch = desc.platform.get("architecture")
                if arch == "unknown":
                    continue  # build attestations and signatures, not images
                found.append(
                    Choice(
                        refs=[name] if name else [],
                        load=partial(self._load_oci, desc),
                        arch=arch_from_oci(arch, desc.platform.get("variant")) if arch else None,
                        os=desc.platform.get("os"),
                    )
                )
        return found

    def _load_oci(self, desc: Descriptor) -> Image:
        where = f"manifest {desc.digest[:19]} of {self.label}"
        manifest = mapping(self.json_blob(desc, "manifest"), where)
        kind = text(manifest, "mediaType", where)
        if kind and kind not in MANIFEST_TYPES:
            raise RejectedError(f"{where} has media type {kind!r}, not an image manifest")
        config_desc = descriptor(manifest.get("config"), f"{where}: config")
        config = mapping(self.json_blob(config_desc, "image config"), f"config of {self.label}")
        listed = manifest.get("layers")
        if not isinstance(listed, list):
            raise RejectedError(f"{where} has no list of layers")
        layers = []
        for number, item in enumerate(listed, start=1):
            layer = descriptor(item, f"{where}: layer {number}")
            if layer.media_type not in LAYER_TYPES:
                raise RejectedError(
                    f"layer {number} of {self.label} has media type {layer.media_type!r}, which "
                    "virtkit cannot unpack (only tar layers, plain, gzip or zstd compressed)"
                )
            layers.append(Layer(_blob_path(layer.digest), layer.digest, layer.size, layer.media_type))
        return Image(config, config_desc.digest, layers)

    # -- docker save ------------------------------------------------------------------------------

    def _docker_choices(self) -> list[Choice]:
        entries = self.json_file("manifest.json", "manifest")
        if not isinstance(entries, list):
            raise RejectedError(f"manifest.json of {self.label} is not a list of images")
        choices = []
        for number, entry in enumerate(entries):
            where = f"manifest.json of {self.label}: image {number + 1}"
            doc = mapping(entry, where)
            choices.append(
                Choice(string_list(doc, "RepoTags", where), partial(self._load_docker, doc, where))
            )
        return choices

    def _load_docker(self, entry: dict[str, Any], where: str) -> Image:
        config_path = text(entry, "Config", where)
        config_digest = _named_digest(config_path)
        if config_digest is None:
            raise RejectedError(f"{where}: the config file {config_path!r} is not named by its digest")
        config = mapping(
            self.json_file(config_path, "image config", config_digest), f"config of {self.label}"
        )
        paths = string_list(entry, "Layers", where)
        expected = diff_ids(config, f"config of {self.label}")
        if len(expected) != len(paths):
            raise RejectedError(f"{where} lists {len(paths)} layers but its config {len(expected)}")
        layers = [
            Layer(path, _named_digest(path) or diff_id, None)
            for path, diff_id in zip(paths, expected, strict=True)
        ]
        return Image(config, config_digest, layers)


def _blob_path(digest: str) -> str:
    algorithm, hexdigest = digest.split(":")
    return f"blobs/{algorithm}/{hexdigest}"


def _named_digest(path: str) -> str | None:
    """The digest a docker-archive file name carries: blobs/sha256/<hex> or <hex>.json/<hex>.tar."""
    match = _NAMED_BLOB.fullmatch(path)
    if match is None:
        return None
    if match.group(3):
        return f"sha256:{match.group(3)}"
    algorithm, hexdigest = match.group(1), match.group(2)
    return f"{algorithm}:{hexdigest}" if len(hexdigest) == {"sha256": 64, "sha512": 128}[algorithm] else None
