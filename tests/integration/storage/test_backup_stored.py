"""Format version 3's stored digest (storage/backupstored.py): the sha256 of the archive's bytes
before its checksum list. A good version-3 archive imports; one byte changed anywhere before the
list, a digest of the wrong length or out of place, a list of another version's kind, are each
refused with a clear error, and the state root is left exactly as it was."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.storage.test_backup_hostile import Host, good, host, snapshot_state  # noqa: F401
from tests.unit.storage.backupbuild import Backup, tar_of, version3
from virtkit.errors import RejectedError
from virtkit.storage.backupformat import CHECKSUMS
from virtkit.storage.backupstored import TAIL, StoredHasher
from virtkit.storage.backupwrite import ArchiveWriter
from virtkit.units import MiB

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

BIG = os.urandom(TAIL + MiB)  # a part big enough that a digest may end too early


def with_big_part(backup: Backup) -> Backup:
    backup.manifest["files"].append({"id": "big", "file": "big", "size": len(BIG)})
    backup.parts["files/big"] = ("files", BIG)
    return backup


def flipped(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 0x01
    return bytes(changed)


def middle_of_big(data: bytes) -> int:
    return data.index(BIG[:64]) + len(BIG) // 2


CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "a byte of a part flipped": (lambda: (lambda d: flipped(d, middle_of_big(d)))(
        version3(with_big_part(good()))), "is corrupt: the sha256 of its first"),
    "a byte of the manifest's padding flipped": (lambda: (lambda d: flipped(d, 1000))(
        version3(with_big_part(good()))), "is corrupt|not a virtkit backup|manifest"),
    "a digest of fewer bytes": (lambda: version3(with_big_part(good()), stored=lambda offset, data: {
        "bytes": offset - 512, "sha256": hashlib.sha256(data[: offset - 512]).hexdigest()}),
        "not where the list begins"),
    "a digest ending far before the list": (lambda: version3(with_big_part(good()), stored=lambda o, d: {
        "bytes": 1024, "sha256": hashlib.sha256(d[:1024]).hexdigest()}), "not where the list begins"),
    "a digest ending past the file": (lambda: version3(good(), stored=lambda offset, data: {
        "bytes": 1 << 40, "sha256": "0" * 64}), "not where the list begins"),
    "version 3 without a stored digest": (lambda: version3(good(), sums=lambda s: {
        k: v for k, v in s.items() if k != "stored"}), "not one of format version 3"),
    "version 3 with a sha256 of each part too": (lambda: version3(with_big_part(good()), sums=lambda s: {
        **s, "files": {"big": hashlib.sha256(BIG).hexdigest()}}), "not one of format version 3"),
    "version 1 with a stored digest": (lambda: tar_of(good().members({**good().checksums(), "stored": {
        "bytes": 0, "sha256": "0" * 64}})), "which format version 1 does not"),
}  # fmt: skip


def test_a_version_3_archive_imports(host: Host) -> None:  # noqa: F811
    path = host.tmp / "v3.tar"
    path.write_bytes(version3(with_big_part(good("v3"))))
    assert host.backups().import_archive(path).record.name == "v3"


def refused_leaving_all(host: Host, data: bytes, match: str, name: str = "case.tar") -> None:  # noqa: F811
    """The archive `data` is refused with an error matching `match`, and the state root is as it was."""
    path = host.tmp / name
    path.write_bytes(data)
    before = snapshot_state(host)
    with pytest.raises(RejectedError, match=match) as caught:
        host.backups().import_archive(path)
    assert len(caught.value.message) < 600
    assert snapshot_state(host) == before
    assert not (host.root / "staging").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_stored_digest_is_refused(host: Host, case: str) -> None:  # noqa: F811
    build, match = CASES[case]
    refused_leaving_all(host, build(), match)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_the_exporter_seals_what_comes_before_the_list(tmp_path: Path, compression: str) -> None:
    """`virtkit export`'s writer: the digest is of exactly the bytes before the checksum list's run
    (uncompressed: before its header), and a reader accepts it."""
    source = tmp_path / "big"
    source.write_bytes(BIG)
    writer = ArchiveWriter(tmp_path / "a.tar", compression)
    with open(source, "rb") as file:
        writer.add_bytes("virtkit-backup.json", b"{}")
        writer.add_file("files", "big", file.fileno(), len(BIG))
        path = writer.close()
    data = path.read_bytes()
    plain = data if compression == "none" else subprocess.run(["zstd", "-dc"], input=data, check=True,
                                                              capture_output=True).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        member = tar.getmember(CHECKSUMS)
        listed = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    stored = listed["stored"]
    assert set(listed) == {"manifest", "trees", "stored"}  # no sha256 of each part
    assert stored["sha256"] == hashlib.sha256(data[: stored["bytes"]]).hexdigest()
    if compression == "none":
        assert stored["bytes"] == member.offset
    else:
        assert 0 < len(data) - stored["bytes"] < TAIL
        rest = subprocess.run(["zstd", "-dc"], input=data[stored["bytes"] :], check=True, capture_output=True)
        assert rest.stdout.startswith(plain[member.offset : member.offset + 512])  # the list's own run
    fd = os.open(path, os.O_RDONLY)
    try:
        assert StoredHasher(fd, len(data)).digest(stored["bytes"]) == stored["sha256"]
        assert StoredHasher(fd, len(data)).digest(len(data) + 1) is None
        assert StoredHasher(fd, len(data)).digest(stored["bytes"] - 1) != stored["sha256"]
    finally:
        os.close(fd)
