"""The export cache of an image's compressed tree (storage/backupcache.py): a second archive made
from the cache holds the very same members as one compressed afresh; a changed tree, a truncated
or unreadable cache entry is a miss, never a wrong archive; sweep keeps only images still here."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from virtkit.storage.backupcache import TreeCache, sweep
from virtkit.storage.backupformat import CHECKSUMS, TREES
from virtkit.storage.backuptree import walk
from virtkit.storage.backupwrite import ArchiveWriter

KEY = "cd" * 32


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    top = tmp_path / "image"
    (top / "bin").mkdir(parents=True)
    (top / "bin" / "init").write_bytes(b"#!/bin/sh\nexec sleep 1000\n")
    (top / "etc").mkdir()
    (top / "etc" / "hostname").write_text("tiny\n")
    (top / "big").write_bytes(os.urandom(300_000))
    os.symlink("bin/init", top / "init")
    return top


def export(tree: Path, dest: Path, cache: TreeCache | None, compression: str = "zstd") -> tuple[int, int]:
    writer = ArchiveWriter(dest, compression)
    try:
        counted = writer.add_tree("image", walk(tree), cache)
        writer.add_bytes("files/note", b"after the tree\n")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return counted


def members(archive: Path) -> list[tuple[str, bytes]]:
    """Every member's name, header fields and content, as a reader sees them (the checksum list
    without its stored digest: that one is of the archive's bytes, framed differently from a cache)."""
    raw = subprocess.run(["zstd", "-dc", str(archive)], capture_output=True, check=True).stdout
    seen = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for info in tar:
            data = tar.extractfile(info).read() if info.isfile() else b""  # type: ignore[union-attr]
            if info.name == CHECKSUMS:
                sums = json.loads(data)
                assert set(sums.pop("stored")) == {"bytes", "sha256", "skipped"}
                data = json.dumps(sums).encode()
            seen.append((f"{info.name} {info.type!r} {info.mode} {info.linkname} {info.size}", data))
    return seen


def test_a_cached_tree_makes_the_same_members(tree: Path, tmp_path: Path) -> None:
    cache = TreeCache(tmp_path / "cache", KEY)
    first = export(tree, tmp_path / "a.tar.zst", cache)
    kept = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert kept == [f"{KEY}.zstd.frames", f"{KEY}.zstd.json"]
    frames = (tmp_path / "cache" / kept[0]).stat()
    second = export(tree, tmp_path / "b.tar.zst", cache)
    assert (tmp_path / "cache" / kept[0]).stat().st_mtime_ns == frames.st_mtime_ns  # a hit: not rewritten
    fresh = export(tree, tmp_path / "c.tar.zst", None)
    assert first == second == fresh
    assert members(tmp_path / "b.tar.zst") == members(tmp_path / "c.tar.zst")
    assert any(name.startswith(f"{TREES}/image/bin/init ") for name, _ in members(tmp_path / "b.tar.zst"))


def test_a_changed_tree_is_compressed_again(tree: Path, tmp_path: Path) -> None:
    cache = TreeCache(tmp_path / "cache", KEY)
    export(tree, tmp_path / "a.tar.zst", cache)
    before = (tmp_path / "cache" / f"{KEY}.zstd.frames").stat().st_mtime_ns
    (tree / "etc" / "hostname").write_text("changed\n")
    export(tree, tmp_path / "b.tar.zst", cache)
    assert (tmp_path / "cache" / f"{KEY}.zstd.frames").stat().st_mtime_ns != before  # a miss: kept anew
    found = dict((name.split()[0], data) for name, data in members(tmp_path / "b.tar.zst"))
    assert found[f"{TREES}/image/etc/hostname"] == b"changed\n"
    assert members(tmp_path / "b.tar.zst") == members(export_fresh(tree, tmp_path))


def export_fresh(tree: Path, tmp_path: Path) -> Path:
    dest = tmp_path / f"fresh-{os.urandom(3).hex()}.tar.zst"
    export(tree, dest, None)
    return dest


@pytest.mark.parametrize("damage", ["truncate", "garbage-meta", "no-frames"])
def test_a_damaged_entry_is_a_miss(tree: Path, tmp_path: Path, damage: str) -> None:
    cache = TreeCache(tmp_path / "cache", KEY)
    export(tree, tmp_path / "a.tar.zst", cache)
    frames = tmp_path / "cache" / f"{KEY}.zstd.frames"
    meta = tmp_path / "cache" / f"{KEY}.zstd.json"
    if damage == "truncate":
        os.truncate(frames, frames.stat().st_size // 2)
    elif damage == "garbage-meta":
        meta.write_bytes(b"\x00{not json")
    else:
        frames.unlink()
    export(tree, tmp_path / "b.tar.zst", cache)
    assert members(tmp_path / "b.tar.zst") == members(export_fresh(tree, tmp_path))


def test_no_cache_without_compression(tree: Path, tmp_path: Path) -> None:
    cache = TreeCache(tmp_path / "cache", KEY)
    export(tree, tmp_path / "a.tar", cache, compression="none")
    assert not (tmp_path / "cache").exists()


def test_sweep_keeps_only_images_still_here(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    for key in ("aa" * 32, "bb" * 32):
        for suffix in (".zstd.frames", ".zstd.json", ".gzip.json"):
            (directory / f"{key}{suffix}").write_bytes(b"x")
    sweep(directory, {"aa" * 32})
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        f"{'aa' * 32}{s}" for s in (".zstd.frames", ".zstd.json", ".gzip.json")
    )
    sweep(tmp_path / "absent", set())  # nothing there: nothing to do


def test_a_cache_that_cannot_be_written_does_not_fail_the_export(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the directory should be")
    export(tree, tmp_path / "a.tar.zst", TreeCache(tmp_path / "cache", KEY))
    assert members(tmp_path / "a.tar.zst") == members(export_fresh(tree, tmp_path))
