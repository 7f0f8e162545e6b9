"""Format version 4: in a zstd archive the stored digest leaves out the zstd run of each big disk
and file (storage/backupstored.py), which its frame's content checksum covers. A good one imports;
a byte changed in the run is caught by zstd, one outside it by the digest; a list that leaves out
more, less or other than those runs, or a run whose frame carries no checksum, is refused with a
clear error, and the state root is left exactly as it was. The exporter's own archive says where
its runs are, and its digest is of exactly the rest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.storage.test_backup_hostile import Host, good, host  # noqa: F401
from tests.integration.storage.test_backup_stored import refused_leaving_all
from tests.unit.storage.backupbuild import Backup, version3, zstd_version4
from virtkit.storage import backupread
from virtkit.storage.backupformat import CHECKSUMS, OWN_RUN
from virtkit.storage.backupstored import segments
from virtkit.storage.backupwrite import ArchiveWriter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

BIG = os.urandom(OWN_RUN + 4096)  # random: its run is as long as the part, and flags are found


def with_big_part(backup: Backup) -> Backup:
    backup.manifest["files"].append({"id": "big", "file": "big", "size": len(BIG)})
    backup.parts["files/big"] = ("files", BIG)
    return backup


def v4(stored: Callable[[dict[str, Any]], dict[str, Any]] | None = None, big_flags: tuple[str, ...] = ()
       ) -> bytes:  # fmt: skip
    return zstd_version4(with_big_part(good()), "files/big", stored, big_flags)


def skipped_of(data: bytes) -> tuple[int, int]:
    listed = json.loads(_list_of(data))
    [[start, end]] = listed["stored"]["skipped"]
    return start, end


def _list_of(data: bytes) -> bytes:
    plain = subprocess.run(["zstd", "-dc"], input=data, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        return tar.extractfile(tar.getmember(CHECKSUMS)).read()  # type: ignore[union-attr]


def flipped(data: bytes, at: int, bit: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[at] ^= bit
    return bytes(changed)


def ranges(change: Callable[[list[list[int]]], object]) -> Callable[[], bytes]:
    """A version-4 archive whose list of left-out ranges is `change(the true one)`, or has none
    when that is None."""

    def entry(stored: dict[str, Any]) -> dict[str, Any]:
        rest = {key: value for key, value in stored.items() if key != "skipped"}
        wanted = change(stored["skipped"])
        return rest if wanted is None else {**rest, "skipped": wanted}

    return lambda: v4(entry)


def moved(by_start: int, by_end: int) -> Callable[[], bytes]:
    return ranges(lambda runs: [[runs[0][0] + by_start, runs[0][1] + by_end]])


def flipped_at(where: Callable[[tuple[int, int]], int], bit: int = 0x01) -> Callable[[], bytes]:
    """A good version-4 archive with one bit flipped at `where(its left-out range)`."""
    return lambda: (lambda data: flipped(data, where(skipped_of(data)), bit))(v4())


def version3_leaving_out() -> bytes:
    return version3(good(), stored=lambda offset, data: {
        "bytes": offset, "sha256": hashlib.sha256(data[:offset]).hexdigest(), "skipped": []})  # fmt: skip


NOT_A_RUN = "not one zstd run with its content checksum"
CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "a byte of the big run flipped": (flipped_at(lambda run: sum(run) // 2), "truncated or corrupt"),
    "a byte before the big run flipped": (flipped_at(lambda run: run[0] - 20), "corrupt"),
    "the run's frame without its content checksum": (lambda: v4(big_flags=("--no-check",)), NOT_A_RUN),
    "the checksum flag of the run's frame cleared": (flipped_at(lambda run: run[0] + 4, 0x04),
                                                     f"{NOT_A_RUN}|truncated or corrupt"),
    "no range left out": (ranges(lambda runs: []), "leaves 0 ranges out"),
    "no list of ranges": (ranges(lambda runs: None), "leaves 0 ranges out"),
    "a second range": (ranges(lambda runs: [*runs, [1, 2]]), "leaves 2 ranges out"),
    "a range that begins inside the run": (moved(1, 0), NOT_A_RUN),
    "a range that begins before the run": (moved(-512, 0), NOT_A_RUN),
    "a range that ends inside the run": (moved(0, -1), NOT_A_RUN),
    "a range from the first byte": (ranges(lambda runs: [[0, runs[0][1]]]), NOT_A_RUN),
    "a range past the list": (moved(0, 1 << 20), NOT_A_RUN),
    "a range ending where it begins": (ranges(lambda runs: [[runs[0][0], runs[0][0]]]), NOT_A_RUN),
    "a range that is not a pair": (ranges(lambda runs: [[5]]), "checksum list is not valid"),
    "version 3 leaving a range out": (version3_leaving_out, "which format version 3 does not"),
}


def test_a_version_4_zstd_archive_imports(host: Host) -> None:  # noqa: F811
    path = host.tmp / "v4.tar.zst"
    path.write_bytes(zstd_version4(with_big_part(good("v4")), "files/big"))
    (host.tmp / "staged").mkdir()
    staged = backupread.read(path, host.tmp / "staged", check=lambda manifest: None)
    assert staged.parts["big"].read_bytes() == BIG
    assert host.backups().import_archive(path).record.name == "v4"


def test_a_plain_version_4_archive_leaves_nothing_out(host: Host) -> None:  # noqa: F811
    """Without zstd no range may be left out: the digest covers the big part's bytes."""
    data = version3(with_big_part(good("plain")), stored=lambda offset, data: {
        "bytes": offset, "sha256": hashlib.sha256(data[:offset]).hexdigest(), "skipped": [[1024, 2048]]},
        version=4)  # fmt: skip
    refused_leaving_all(host, data, "leaves 1 ranges out of its stored digest, not one for each of its 0 big")


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_skipped_range_is_refused(host: Host, case: str) -> None:  # noqa: F811
    build, match = CASES[case]
    refused_leaving_all(host, build(), match, "case.tar.zst")


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_the_exporter_leaves_out_only_a_big_parts_zstd_run(tmp_path: Path, compression: str) -> None:
    source = tmp_path / "big"
    source.write_bytes(BIG)
    small = tmp_path / "small"
    small.write_bytes(BIG[: OWN_RUN - 1])
    writer = ArchiveWriter(tmp_path / "a.tar", compression)
    with open(source, "rb") as file, open(small, "rb") as other:
        writer.add_bytes("virtkit-backup.json", b"{}")
        writer.add_file("disks", "big", file.fileno(), len(BIG))
        writer.add_file("files", "small", other.fileno(), OWN_RUN - 1)
        path = writer.close()
    data = path.read_bytes()
    if compression == "none":
        with tarfile.open(path) as tar:
            stored = json.loads(tar.extractfile(CHECKSUMS).read())["stored"]  # type: ignore[union-attr]
    elif compression == "gzip":
        plain = subprocess.run(["gzip", "-dc"], input=data, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
            stored = json.loads(tar.extractfile(CHECKSUMS).read())["stored"]  # type: ignore[union-attr]
    else:
        stored = json.loads(_list_of(data))["stored"]
    skipped = [tuple(run) for run in stored["skipped"]]
    rest = b"".join(data[low:high] for low, high in segments(0, stored["bytes"], skipped))
    assert stored["sha256"] == hashlib.sha256(rest).hexdigest()
    if compression != "zstd":
        assert skipped == []
        return
    [(start, end)] = skipped
    assert data[start : start + 4] == b"\x28\xb5\x2f\xfd" and data[start + 4] & 0x04  # with its checksum
    alone = subprocess.run(["zstd", "-dc"], input=data[start:end], check=True, capture_output=True).stdout
    assert alone == BIG  # exactly the part's bytes, one frame of their own
    assert end < stored["bytes"]  # the small file after it is hashed


def test_segments() -> None:
    assert list(segments(0, 100, [])) == [(0, 100)]
    assert list(segments(0, 100, [(10, 20), (30, 40)])) == [(0, 10), (20, 30), (40, 100)]
    assert list(segments(15, 35, [(10, 20), (30, 40)])) == [(20, 30)]
    assert list(segments(0, 20, [(0, 20)])) == []
    assert list(segments(50, 60, [(10, 20)])) == [(50, 60)]
    assert list(segments(0, 10, [(20, 30)])) == [(0, 10)]
