"""Every hostile import, driven as the CLI drives it (`virtkit.ops.images.import_image` on a real state
root): each is refused with a VirtkitError, and afterwards the store's records, the image directory,
the source's directory and the places a hostile archive aims at are exactly as they were before."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import struct
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.images.ocibuild import (
    LAYER1,
    LAYER2,
    add_manifest,
    docker_archive,
    oci_layout,
    simple_layout,
    tar_tree,
)
from tests.unit.storage.tarbuild import (
    compress,
    directory,
    hardlink,
    reg,
    symlink,
    tar_bytes,
    write,
)
from virtkit.errors import NotFoundError, RejectedError, SpecError, VirtkitError
from virtkit.images.export import METADATA
from virtkit.model import ImageRecord
from virtkit.ops.images import delete_image, export, import_image
from virtkit.store import Store, open_store
from virtkit.units import MiB

from .diskbuild import (
    fifo,
    huge,
    json_backing,
    make_iso,
    patched,
    qemu_img,
    truncated,
    two_extents,
    vhd_with_huge_table,
    vmdk_reading_host_files,
)

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("prlimit") is None, reason="needs qemu-img and prlimit"
)

# A layer or rootfs member unpacks into ROOT/images/.staging/<id>/rootfs: five ".." from there is the
# test's tmp_path (ROOT is tmp_path/"root"), where the would-be targets are checked.
UP = "../" * 5
VICTIM = b"the host's file\n"


@dataclass(frozen=True)
class Kit:
    """What a case builds its source with."""

    dir: Path  # where sources are made (tmp_path/"in"); nothing may appear here
    tmp: Path  # the test's tmp_path: hostile archives aim here
    made: Callable[[str], Path]  # a disk converted from the module's raw disk ("qcow2", "vdi", ...)
    raw: Path
    bundle: Path  # a good `virtkit image export` archive


@dataclass(frozen=True)
class Case:
    build: Callable[[Kit], Path]
    match: str
    error: type[VirtkitError] = RejectedError
    fmt: str | None = None
    name: str | None = None
    outside: tuple[str, ...] = ()  # paths under tmp_path that must not exist afterwards


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_source(work: Path) -> Path:
    """A small raw disk (named .img, so taken as raw) for the good import every test starts with."""
    path = work / "good.img"
    path.write_bytes(os.urandom(MiB))
    return path


@pytest.fixture(scope="module")
def bundle(work: Path) -> Path:
    """A good image archive: imported, exported and deleted again in a root of its own."""
    root = work / "exporter"
    disk = _create(work / "exported.qcow2", "qcow2", "4M")
    assert qemu_img("resize", disk, "8M").returncode == 0  # content differing from other images
    with open_store(root) as store:
        import_image(root, store, disk, name="exported")
        dest = export(root, store, "exported", work / "exported.tar")
        delete_image(root, store, "exported")
        assert store.list(ImageRecord) == []
    return dest


@pytest.fixture
def kit(tmp_path: Path, made: Callable[[str], Path], raw_disk: Path, bundle: Path) -> Kit:
    (tmp_path / "in").mkdir()
    (tmp_path / "victim").write_bytes(VICTIM)
    return Kit(tmp_path / "in", tmp_path, made, raw_disk, bundle)


@pytest.fixture(params=["one image", "no image"])
def rooted(request: pytest.FixtureRequest, tmp_path: Path, good_source: Path) -> Iterator[tuple[Path, Store]]:
    """A state root opened as the CLI opens it: holding one good image, or none (and no image
    directory, which a refused import must not leave behind)."""
    root = tmp_path / "root"
    with open_store(root) as store:
        if request.param == "one image":
            import_image(root, store, good_source, name="good")
        yield root, store


# --- the state compared before and after -----------------------------------------------------------


def tree(top: Path) -> list[tuple[str, ...]] | None:
    """Every entry under `top` with its type, mode and size, content digest or link target; None
    when `top` does not exist. Links are not followed; nothing but regular files is opened."""
    if not top.exists() and not top.is_symlink():
        return None
    entries: list[tuple[str, ...]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath, name)
            info = path.lstat()
            mode = f"{info.st_mode:o}"
            relative = str(path.relative_to(top))
            if stat.S_ISLNK(info.st_mode):
                entries.append((relative, mode, os.readlink(path)))
            elif stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries.append((relative, mode, str(info.st_size), str(info.st_nlink), digest))
            else:
                entries.append((relative, mode))
    return sorted(entries)


def state(root: Path, store: Store) -> dict[str, object]:
    records = sorted(
        (r.model_dump(mode="json") for r in store.list(ImageRecord)), key=lambda r: r["fingerprint"]
    )
    top = sorted(n for n in os.listdir(root) if not n.endswith(("-wal", "-shm")))
    return {"records": records, "images": tree(root / "images"), "root": top}


# --- small builders --------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _create(path: Path, fmt: str, size: str = "64M", *options: str, cwd: Path | None = None) -> Path:
    done = qemu_img("create", "-f", fmt, *options, path, size, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return path


def _overlay(directory: Path, name: str = "overlay.qcow2") -> Path:
    """A qcow2 whose backing file is a real qcow2 beside it, named by its absolute path."""
    base = _create(directory / "base.qcow2", "qcow2")
    return _create(directory / name, "qcow2", "64M", "-b", str(base), "-F", "qcow2")


def _vmdk_delta(directory: Path) -> Path:
    _create(directory / "parent.vmdk", "vmdk")
    _create(Path("child.vmdk"), "vmdk", "64M", "-b", "parent.vmdk", "-F", "vmdk", cwd=directory)
    return directory / "child.vmdk"


def _flat(raw: Path, directory: Path) -> Path:
    target = directory / "flat.vmdk"
    done = qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat", raw, target)
    assert done.returncode == 0, done.stderr
    return target


def _bomb(path: Path, size: int = 256 * MiB) -> Path:
    """A gzip'd tar of one file of zeros (about 1000:1), streamed rather than held in memory."""

    class Zeros:
        def __init__(self, left: int) -> None:
            self.left = left

        def read(self, count: int = -1) -> bytes:
            count = self.left if count < 0 else min(count, self.left)
            self.left -= count
            return bytes(count)

    info, _ = reg("zeros")
    info.size = size
    with gzip.GzipFile(path, "wb", mtime=0) as packed, tarfile.open(fileobj=packed, mode="w") as tar:
        tar.addfile(info, Zeros(size))
    return path


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(16) + data[middle + 16 :]


def _layer_blob(layout: Path, index: int) -> Path:
    digest: str = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_text())
    layer: str = manifest["layers"][index]["digest"]
    return layout / "blobs/sha256" / layer.split(":")[1]


def _layout(kit: Kit) -> Path:
    return simple_layout(kit.dir / "layout", ("none", "none"))


def _digest_mismatch(kit: Kit) -> Path:
    layout = _layout(kit)
    blob = _layer_blob(layout, 1)
    data = bytearray(blob.read_bytes())
    data[600] ^= 0xFF  # same size, different content
    blob.write_bytes(bytes(data))
    return layout


def _missing_blob(kit: Kit) -> Path:
    layout = _layout(kit)
    _layer_blob(layout, 0).unlink()
    return layout


def _escaping_layer(kit: Kit, archive: bool) -> Path:
    evil = tar_bytes([reg("ok", b"1"), reg(UP + "escaped", b"x")])
    root = kit.dir / "evil-layout"
    oci_layout(root, [("v1", add_manifest(root, [LAYER1, evil], ["gzip", "none"]))])
    return tar_tree(root, kit.dir / "evil.tar") if archive else root


def _diff_id_mismatch(kit: Kit) -> Path:
    saved = docker_archive(kit.dir / "saved", [LAYER1, LAYER2], ["app:v1"])
    layer = next(saved.glob("*/layer.tar"))
    layer.write_bytes(layer.read_bytes().replace(b"stays", b"STAYS"))
    return tar_tree(saved, kit.dir / "app.tar")


def _oci_archive_with_fifo(kit: Kit) -> Path:
    layout = simple_layout(kit.dir / "layout")
    os.mkfifo(layout / "pipe")
    return tar_tree(layout, kit.dir / "fifo.tar")


def _bundle_entries(kit: Kit) -> tuple[dict[str, object], bytes]:
    with tarfile.open(kit.bundle) as tar:
        names = tar.getnames()
        assert names == [METADATA, "disk.qcow2"], names
        metadata, disk = (tar.extractfile(name) for name in names)
        assert metadata is not None and disk is not None
        return json.loads(metadata.read()), disk.read()


def _bundle(kit: Kit, metadata: bytes, disk: bytes) -> Path:
    return write(kit.dir / "image.tar", [reg(METADATA, metadata), reg("disk.qcow2", disk)])


def _bundle_with_backing(kit: Kit) -> Path:
    metadata, _ = _bundle_entries(kit)
    overlay = _overlay(kit.dir, "disk.qcow2").read_bytes()
    return _bundle(kit, json.dumps(metadata).encode(), overlay)


def _bundle_garbage_metadata(kit: Kit) -> Path:
    _, disk = _bundle_entries(kit)
    return _bundle(kit, b'{"fingerprint": \x00\xff garbage', disk)


def _bundle_files_entry(kit: Kit, files: dict[str, str]) -> Path:
    metadata, disk = _bundle_entries(kit)
    metadata["files"] = files
    return _bundle(kit, json.dumps(metadata).encode(), disk)


def _rootfs(kit: Kit, entries: list[tuple[tarfile.TarInfo, bytes]], kind: str = "none") -> Path:
    suffix = {"none": ".tar", "gzip": ".tar.gz", "xz": ".tar.xz"}[kind]
    return write(kit.dir / f"rootfs{suffix}", entries, kind)


def _symlink_write_through(kit: Kit) -> Path:
    (kit.tmp / "host-etc").mkdir()
    return _rootfs(kit, [symlink("etc", str(kit.tmp / "host-etc")), reg("etc/passwd", b"pwned")])


# --- the cases -------------------------------------------------------------------------------------

CASES: dict[str, Case] = {
    # disk images that reach for other files
    "qcow2 backing file": Case(lambda k: _overlay(k.dir), "refers to a backing file"),
    "qcow2 json: backing": Case(lambda k: json_backing(k.made("qcow2"), k.dir), "json: pseudo"),
    "qcow2 external data file": Case(
        lambda k: _create(k.dir / "split.qcow2", "qcow2", "64M", "-o", f"data_file={k.dir / 'split.raw'}"),
        "external data file",
    ),
    "qcow2 encrypted": Case(
        lambda k: patched(k.made("qcow2"), k.dir / "secret.qcow2", {32: struct.pack(">I", 2)}), "encrypted"
    ),
    "vmdk monolithicFlat": Case(lambda k: _flat(k.raw, k.dir), "refers to other files"),
    "vmdk two extents": Case(lambda k: two_extents(k.dir), r"extents: two-s001\.vmdk, two-s002\.vmdk"),
    "vmdk delta": Case(lambda k: _vmdk_delta(k.dir), "delta disk with a parent"),
    "vmdk zero capacity": Case(lambda k: vmdk_reading_host_files(k.made("vmdk"), k.dir), "no capacity"),
    # disk images whose metadata lies or runs away
    "vhd asking for 2 GiB": Case(lambda k: vhd_with_huge_table(k.made("vhd"), k.dir), "ran out of memory"),
    "qcow2 claiming 100 PiB": Case(lambda k: huge(k.made("qcow2"), k.dir), "100PiB, above the limit"),
    "vhdx of 3 TiB": Case(lambda k: _create(k.dir / "big.vhdx", "vhdx", "3T"), "3TiB, above"),
    "qcow version 1": Case(lambda k: _create(k.dir / "old.qcow", "qcow"), "qcow version 1"),
    # truncated or corrupt disks
    "truncated qcow2": Case(lambda k: truncated(k.made("qcow2"), k.dir), "corrupt or truncated"),
    "truncated vdi": Case(lambda k: truncated(k.made("vdi"), k.dir), "is truncated"),
    "truncated vhdx": Case(lambda k: truncated(k.made("vhdx"), k.dir), "truncated"),
    "truncated vmdk": Case(lambda k: truncated(k.made("vmdk"), k.dir), "points after EOF"),
    "truncated vhd": Case(lambda k: truncated(k.made("vhd"), k.dir), "truncated"),
    "raw not whole sectors": Case(lambda k: _write(k.dir / "odd.img", bytes(1000)), "not a whole"),
    # files that are not what their name says
    "random bytes named .qcow2": Case(
        lambda k: _write(k.dir / "random.qcow2", os.urandom(MiB)), r"random\.qcow2 is not a qcow2 image"
    ),
    "raw named .vmdk": Case(lambda k: shutil.copyfile(k.raw, k.dir / "raw.vmdk"), "is not a VMDK image"),
    "qcow2 named .raw": Case(
        lambda k: shutil.copyfile(k.made("qcow2"), k.dir / "disk.raw"), "named as raw data but holds a qcow2"
    ),
    "random bytes with --format qcow2": Case(
        lambda k: _write(k.dir / "random.img", os.urandom(MiB)), "not a qcow2 image", fmt="qcow2"
    ),
    "unknown --format": Case(lambda k: k.made("qcow2"), "unknown image format", error=SpecError, fmt="qcow3"),
    "bad --name": Case(lambda k: k.made("qcow2"), "image name", error=SpecError, name="../evil"),
    "truncated iso": Case(
        lambda k: _write(k.dir / "short.iso", make_iso(k.dir / "whole.iso").read_bytes()[: 20 * 2048]),
        "is truncated",
    ),
    "iso without primary descriptor": Case(
        lambda k: make_iso(k.dir / "odd.iso", primary=False), "no primary volume descriptor"
    ),
    # not regular files
    "empty file": Case(lambda k: _write(k.dir / "empty.img", b""), r"empty\.img is empty"),
    "directory named .qcow2": Case(lambda k: _mkdir(k.dir / "dir.qcow2"), "dir.qcow2"),
    "fifo": Case(lambda k: fifo(k.dir), "FIFO, not a regular file"),
    "symlink to /dev/zero": Case(lambda k: _link(k.dir / "zero.img", "/dev/zero"), "character device"),
    "symlink to /proc/cpuinfo": Case(
        lambda k: _link(k.dir / "cpu.img", "/proc/cpuinfo"), "kernel pseudo-file"
    ),
    "symlink to /etc/shadow": Case(
        lambda k: _link(k.dir / "shadow.qcow2", "/etc/shadow"), r"shadow\.qcow2 is not a qcow2 image"
    ),
    "missing file": Case(lambda k: k.dir / "gone.qcow2", "gone.qcow2", error=NotFoundError),
    "dangling symlink": Case(
        lambda k: _link(k.dir / "dangling.qcow2", str(k.dir / "nowhere.qcow2")),
        "missing file",
        error=NotFoundError,
    ),
    # rootfs tarballs
    "tar absolute path": Case(
        lambda k: _rootfs(k, [reg("ok", b"1"), reg(str(k.tmp / "abs-escaped"), b"x")]),
        "has a path that is absolute",
        outside=("abs-escaped",),
    ),
    "tar '..'": Case(
        lambda k: _rootfs(k, [reg("ok", b"1"), reg(UP + "escaped", b"x")]),
        "climbs out of the destination",
        outside=("escaped",),
    ),
    "tar symlink write-through": Case(
        _symlink_write_through, "would be written through 'etc', a symlink", outside=("host-etc/passwd",)
    ),
    "tar relative symlink write-through": Case(
        lambda k: _rootfs(k, [directory("a"), symlink("a/up", "../" * 6), reg("a/up/escaped-rel", b"x")]),
        "would be written through 'a/up'",
        outside=("escaped-rel",),
    ),
    "tar hardlink to an absolute path": Case(
        lambda k: _rootfs(k, [reg("ok", b"1"), hardlink("x", str(k.tmp / "victim"))]), "which is absolute"
    ),
    "tar hardlink with '..'": Case(
        lambda k: _rootfs(k, [reg("ok", b"1"), hardlink("x", UP + "victim")]), "climbs out of the destination"
    ),
    "tar hardlink through a symlink": Case(
        lambda k: _rootfs(k, [symlink("lnk", str(k.tmp)), hardlink("x", "lnk/victim")]),
        "not a file extracted before it",
    ),
    "tar.gz decompression bomb": Case(lambda k: _bomb(k.dir / "bomb.tar.gz"), "decompression bomb"),
    "truncated tar.gz": Case(
        lambda k: _write(
            k.dir / "cut.tar.gz", _cut(compress(tar_bytes([reg("a", os.urandom(64 * 1024))]), "gzip"))
        ),
        "truncated or corrupt",
    ),
    "corrupt tar.xz": Case(
        lambda k: _write(
            k.dir / "bad.tar.xz", _corrupt(compress(tar_bytes([reg("a", os.urandom(64 * 1024))]), "xz"))
        ),
        "truncated or corrupt",
    ),
    "truncated tar": Case(
        lambda k: _write(k.dir / "cut.tar", tar_bytes([reg("a", b"1" * 1000), reg("b", b"2" * 1000)])[:2000]),
        "truncated or corrupt",
    ),
    "text named .tar": Case(lambda k: _write(k.dir / "fake.tar", b"not a tar archive\n" * 40), "fake.tar"),
    "gzip'd text named .tar.gz": Case(
        lambda k: _write(k.dir / "fake.tar.gz", compress(b"text" * 300, "gzip")), "not a tar archive"
    ),
    "tar with data after its end": Case(
        lambda k: _write(k.dir / "two.tar", tar_bytes([reg("a", b"1")]) + tar_bytes([reg("smuggled", b"2")])),
        "neither",
    ),
    "tar holding no files": Case(lambda k: _rootfs(k, [directory("etc")]), "holds no files"),
    "tar member path too long": Case(lambda k: _rootfs(k, [reg("n" * 256)]), "longer than 255 bytes"),
    # OCI layouts and docker save archives
    "oci layout digest mismatch": Case(_digest_mismatch, "does not match its digest"),
    "oci layout missing blob": Case(_missing_blob, "is missing from layout"),
    "oci layout '..' inside a layer": Case(
        lambda k: _escaping_layer(k, archive=False), "climbs out of the destination", outside=("escaped",)
    ),
    "oci archive '..' inside a layer": Case(
        lambda k: _escaping_layer(k, archive=True), "climbs out of the destination", outside=("escaped",)
    ),
    "oci archive with a fifo member": Case(_oci_archive_with_fifo, "device node or FIFO"),
    "docker save diff_id mismatch": Case(_diff_id_mismatch, "does not match its digest"),
    # virtkit image archives (export), tampered with
    "export with a backing-file disk": Case(_bundle_with_backing, "refers to a backing file"),
    "export with garbage metadata": Case(_bundle_garbage_metadata, "not valid virtkit image metadata"),
    "export with files disk=../x": Case(lambda k: _bundle_files_entry(k, {"disk": "../x"}), "is not allowed"),
    "export with files kernel=/etc/shadow": Case(
        lambda k: _bundle_files_entry(k, {"disk": "disk.qcow2", "kernel": "/etc/shadow"}), "is not allowed"
    ),
}


def around(tmp: Path) -> dict[str, object]:
    """Everything in the test's tmp_path but the state root: the sources, the victim file and
    whatever a hostile archive aimed at."""
    return {name: tree(tmp / name) for name in sorted(os.listdir(tmp)) if name != "root"}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_hostile_import_is_refused_and_changes_nothing(
    case: str, kit: Kit, rooted: tuple[Path, Store]
) -> None:
    root, store = rooted
    spec = CASES[case]
    source = Path(spec.build(kit))
    before, outside = state(root, store), around(kit.tmp)
    assert (before["images"] is None) == (before["records"] == [])  # no image, no image directory
    with pytest.raises(VirtkitError) as caught:
        import_image(root, store, source, name=spec.name, fmt=spec.fmt)
    assert isinstance(caught.value, spec.error), f"{type(caught.value).__name__}: {caught.value}"
    assert caught.match(spec.match)
    assert state(root, store) == before
    assert around(kit.tmp) == outside  # sources untouched, nothing new beside them or in tmp_path
    assert (kit.tmp / "victim").read_bytes() == VICTIM and os.stat(kit.tmp / "victim").st_nlink == 1
    for relative in spec.outside:
        assert not os.path.lexists(kit.tmp / relative), relative
