"""Importing OCI layouts and docker-save archives: layers, whiteouts, config, digests, choices."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.unit.images.ocibuild import (
    EXPECTED_TREE,
    LAYER1,
    LAYER2,
    add_manifest,
    docker_archive,
    oci_layout,
    simple_layout,
    tar_tree,
)
from tests.unit.storage.tarbuild import reg, tar_bytes
from virtkit.errors import NotFoundError, RejectedError
from virtkit.images.oci import WORK_DIR, import_oci, is_image_archive
from virtkit.images.ociconfig import arch_from_oci, arch_to_oci
from virtkit.images.rootinfo import host_arch
from virtkit.images.staged import ROOTFS

CONTAINER = {
    "entrypoint": ["/bin/app"],
    "cmd": ["--serve"],
    "env": ["PATH=/usr/bin:/bin", "MODE=test"],
    "workdir": "/srv",
    "user": "1000:1000",
    "ports": ["8080/tcp"],
    "labels": {"org.example": "yes"},
    "stop_signal": "",
}


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def check_imported(staging: Path, staged_format: str, source: Path, **kwargs: object) -> dict[str, str]:
    staged = import_oci(source, staging, name="app", **kwargs)  # type: ignore[arg-type]
    assert (staged.kinds, staged.format, staged.arch) == (["container"], staged_format, "x86_64")
    assert staged.files == {ROOTFS: "rootfs"} and staged.source == str(source)
    assert staged.container == CONTAINER
    assert os.listdir(staging) == ["rootfs"]  # the work directory is gone
    rootfs = staging / "rootfs"
    assert tree(rootfs) == EXPECTED_TREE
    assert (rootfs / "c").read_bytes() == b"stays" and (rootfs / "b/new").read_bytes() == b"new"
    if os.geteuid() == 0:
        assert os.stat(rootfs / "b/new").st_uid == 1000
    return staged.properties


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "staging"
    path.mkdir()
    return path


@pytest.mark.parametrize("kinds", [("gzip", "none"), ("zstd", "gzip")])
def test_oci_layout_directory(tmp_path: Path, staging: Path, kinds: tuple[str, str]) -> None:
    layout = simple_layout(tmp_path / "layout", kinds)
    properties = check_imported(staging, "oci", layout)
    assert properties["ref"] == "v1" and properties["layers"] == "2"
    assert properties["config_digest"].startswith("sha256:")


@pytest.mark.parametrize("kind", ["none", "gzip"])
def test_oci_layout_archive(tmp_path: Path, staging: Path, kind: str) -> None:
    archive = tar_tree(simple_layout(tmp_path / "layout"), tmp_path / "image.tar", kind)
    check_imported(staging, "oci", archive)
    assert is_image_archive(archive)


@pytest.mark.parametrize("modern", [False, True], ids=["legacy", "docker25"])
def test_docker_save_archive(tmp_path: Path, staging: Path, modern: bool) -> None:
    saved = docker_archive(tmp_path / "saved", [LAYER1, LAYER2], ["example/app:v1"], modern)
    archive = tar_tree(saved, tmp_path / "app.tar")
    properties = check_imported(staging, "docker-archive", archive, tag="v1")
    assert properties["ref"] == "example/app:v1"
    assert is_image_archive(archive)


def test_rootfs_tarball_is_not_an_image_archive(tmp_path: Path) -> None:
    (tmp_path / "rootfs.tar").write_bytes(tar_bytes([reg("./etc/hostname", b"x"), reg("./bin/sh")]))
    assert not is_image_archive(tmp_path / "rootfs.tar")


def rejected(source: Path, staging: Path, match: str, **kwargs: object) -> None:
    with pytest.raises(RejectedError, match=match):
        import_oci(source, staging, name="app", **kwargs)  # type: ignore[arg-type]
    assert os.listdir(staging) == []


def layer_blob(layout: Path, index: int) -> Path:
    manifest_digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest.split(":")[1]).read_text())
    return layout / "blobs/sha256" / manifest["layers"][index]["digest"].split(":")[1]


def test_digest_mismatch_is_refused(tmp_path: Path, staging: Path) -> None:
    layout = simple_layout(tmp_path / "layout", ("none", "none"))
    blob = layer_blob(layout, 1)
    data = bytearray(blob.read_bytes())
    data[600] ^= 0xFF  # same size, different content
    blob.write_bytes(bytes(data))
    rejected(layout, staging, r"blob sha256:[0-9a-f]{64} \(layer 2\) in layout does not match its digest")


def test_docker_layer_not_matching_its_diff_id_is_refused(tmp_path: Path, staging: Path) -> None:
    saved = docker_archive(tmp_path / "saved", [LAYER1, LAYER2], ["app:v1"])
    layer = next(saved.glob("*/layer.tar"))
    layer.write_bytes(layer.read_bytes().replace(b"stays", b"STAYS"))
    rejected(tar_tree(saved, tmp_path / "app.tar"), staging, "does not match its digest")


def test_missing_blob_is_refused(tmp_path: Path, staging: Path) -> None:
    layout = simple_layout(tmp_path / "layout")
    layer_blob(layout, 0).unlink()
    rejected(layout, staging, r"layer 1 blobs/sha256/[0-9a-f]{64} is missing from layout")


def test_path_escape_inside_a_layer_is_refused(tmp_path: Path, staging: Path) -> None:
    evil = tar_bytes([reg("ok", b"1"), reg("../../escaped", b"x")])
    root = tmp_path / "layout"
    oci_layout(root, [("v1", add_manifest(root, [LAYER1, evil], ["gzip", "none"]))])
    archive = tar_tree(root, tmp_path / "evil.tar")
    rejected(
        archive, staging, r"archive layer 2/2 \(sha256:.*\) of evil.tar is refused: member '../../escaped'"
    )
    assert not (tmp_path / "escaped").exists()


def test_unknown_layer_media_type_is_refused(tmp_path: Path, staging: Path) -> None:
    root = tmp_path / "layout"
    media = ["application/vnd.oci.image.layer.v1.tar+encrypted"] * 2
    oci_layout(root, [("v1", add_manifest(root, [LAYER1, LAYER2], ["none", "none"], media=media))])
    rejected(root, staging, "media type .*encrypted.*cannot unpack")


def test_not_an_image_at_all(tmp_path: Path, staging: Path) -> None:
    (tmp_path / "rootfs.tar").write_bytes(tar_bytes([reg("etc/hostname", b"x")]))
    rejected(tmp_path / "rootfs.tar", staging, "neither an OCI image layout .* nor a docker save archive")
    with pytest.raises(NotFoundError):
        import_oci(tmp_path / "nope.tar", staging, name="app")


def multi_arch(root: Path, arches: list[tuple[str, str]]) -> Path:
    return oci_layout(
        root, [(ref, add_manifest(root, [LAYER1, LAYER2], ["gzip", "none"], arch)) for ref, arch in arches]
    )


HOST = arch_to_oci(host_arch())
OTHER = "arm64" if HOST != "arm64" else "amd64"


def test_several_images_pick_by_tag_else_host_arch(tmp_path: Path, staging: Path) -> None:
    layout = multi_arch(tmp_path / "layout", [("v1", HOST), ("v2", OTHER)])
    assert import_oci(layout, staging, name="app").properties["ref"] == "v1"
    other = tmp_path / "other"
    other.mkdir()
    assert import_oci(layout, other, name="app", tag="v2").arch == arch_from_oci(OTHER)
    (tmp_path / "empty").mkdir()
    held = f"it holds v1 \\({host_arch()}\\), v2 \\({arch_from_oci(OTHER)}\\)"
    rejected(layout, tmp_path / "empty", f"has no image tagged 'v3': {held}", tag="v3")


def test_several_images_and_no_way_to_choose(tmp_path: Path, staging: Path) -> None:
    layout = multi_arch(tmp_path / "layout", [("v1", OTHER), ("v2", OTHER)])
    theirs = arch_from_oci(OTHER)
    rejected(
        layout,
        staging,
        rf"holds 2 images and none is the one for this host .*: v1 \({theirs}\), v2 \({theirs}\)",
    )


def test_work_directory_is_removed_on_failure(tmp_path: Path, staging: Path) -> None:
    layout = simple_layout(tmp_path / "layout")
    layer_blob(layout, 1).write_bytes(b"garbage")
    archive = tar_tree(layout, tmp_path / "image.tar.gz", "gzip")
    rejected(archive, staging, r"has 7 bytes, not \d+")
    assert not (staging / WORK_DIR).exists()
