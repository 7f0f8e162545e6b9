"""Build OCI image layouts and docker-save archives for tests, from layer tarballs made in memory."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from tests.unit.storage.tarbuild import compress, directory, reg, tar_bytes

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}

# Layer 1 makes /a/file, /b/dir/x, /c; layer 2 whites out /a/file, makes /b opaque and adds /b/new.
LAYER1 = tar_bytes(
    [
        directory("a"),
        reg("a/file", b"gone"),
        directory("b"),
        directory("b/dir"),
        reg("b/dir/x", b"hidden"),
        reg("c", b"stays"),
        reg("bin/app", b"\x7fELF", mode=0o755),
    ]
)
LAYER2 = tar_bytes([reg("a/.wh.file"), reg("b/.wh..wh..opq"), reg("b/new", b"new", uid=1000, gid=1000)])
EXPECTED_TREE = ["a", "b", "b/new", "bin", "bin/app", "c"]
RUN_CONFIG = {
    "Entrypoint": ["/bin/app"],
    "Cmd": ["--serve"],
    "Env": ["PATH=/usr/bin:/bin", "MODE=test"],
    "WorkingDir": "/srv",
    "User": "1000:1000",
    "ExposedPorts": {"8080/tcp": {}},
    "Labels": {"org.example": "yes"},
}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(layers: list[bytes], arch: str = "amd64", run: dict[str, Any] | None = None) -> bytes:
    doc = {
        "architecture": arch,
        "os": "linux",
        "config": RUN_CONFIG if run is None else run,
        "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
    }
    return json.dumps(doc).encode()


def put_blob(root: Path, data: bytes, media: str) -> dict[str, Any]:
    path = root / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"mediaType": media, "digest": digest_of(data), "size": len(data)}


def add_manifest(
    root: Path, layers: list[bytes], kinds: list[str], arch: str = "amd64", media: list[str] | None = None
) -> dict[str, Any]:
    """Write one image's blobs; return its manifest descriptor (without annotations)."""
    config = put_blob(root, image_config(layers, arch), OCI_CONFIG)
    descs = [
        put_blob(root, compress(layer, kind), (media or [])[i] if media else LAYER_MEDIA[kind])
        for i, (layer, kind) in enumerate(zip(layers, kinds, strict=True))
    ]
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": descs}
    desc = put_blob(root, json.dumps(manifest).encode(), OCI_MANIFEST)
    desc["platform"] = {"architecture": arch, "os": "linux"}
    return desc


def oci_layout(root: Path, images: list[tuple[str, dict[str, Any]]]) -> Path:
    """Finish a layout whose blobs are written: index.json lists `images` as (ref, descriptor)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    manifests = [{**desc, "annotations": {"org.opencontainers.image.ref.name": ref}} for ref, desc in images]
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    return root


def simple_layout(root: Path, kinds: tuple[str, str] = ("gzip", "none"), ref: str = "v1") -> Path:
    return oci_layout(root, [(ref, add_manifest(root, [LAYER1, LAYER2], list(kinds)))])


def docker_archive(root: Path, layers: list[bytes], tags: list[str], modern: bool = False) -> Path:
    """A `docker save` tree: legacy (<id>/layer.tar, <hex>.json) or Docker 25+ (blobs/sha256/...)."""
    root.mkdir(parents=True, exist_ok=True)
    config = image_config(layers)
    if modern:
        config_path = "blobs/sha256/" + hashlib.sha256(config).hexdigest()
        paths = ["blobs/sha256/" + hashlib.sha256(layer).hexdigest() for layer in layers]
    else:
        config_path = hashlib.sha256(config).hexdigest() + ".json"
        paths = [f"{hashlib.sha256(b'v1' + layer).hexdigest()}/layer.tar" for layer in layers]
    for path, data in [(config_path, config), *zip(paths, layers, strict=True)]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    manifest = [{"Config": config_path, "RepoTags": tags, "Layers": paths}]
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def tar_tree(root: Path, dest: Path, kind: str = "none") -> Path:
    """`root`'s contents as a tar archive at `dest` (names relative, as `tar -C root -cf dest .`)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    dest.write_bytes(compress(buffer.getvalue(), kind))
    return dest
