"""The backup manifest's rules, the tree digest, id ranges, file capabilities, the qcow2 header
rewrite of a disk streamed as it is, and the order a disk's states must come in: all pure."""

from __future__ import annotations

import json
import struct
import tarfile
from typing import Any

import pytest

from tests.unit.storage.backupbuild import container_backup
from virtkit.errors import RejectedError
from virtkit.storage.backupdisk import unlinked_header
from virtkit.storage.backupformat import MAX_MANIFEST, VERSION, parse_manifest
from virtkit.storage.backupplace import disk_plan
from virtkit.storage.backuptree import IdRange, caps_v2, caps_v3, tarinfo_line


def manifest(**changes: Any) -> dict[str, Any]:
    document = container_backup().manifest
    document.update(changes)
    return document


def parse(document: dict[str, Any]) -> Any:
    return parse_manifest(json.dumps(document).encode(), "b.tar")


def test_a_good_manifest_parses() -> None:
    parsed = parse(manifest())
    assert parsed.instance.name == "web" and [t.id for t in parsed.trees] == ["image", "upper", "upper@snap0"]
    assert parsed.declared_bytes() > 0 and MAX_MANIFEST == 1 << 20


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"version": VERSION + 1}, f"format version {VERSION + 1}, newer than this virtkit reads"),
        ({"version": "1"}, "no valid format version"),
        ({"version": True}, "no valid format version"),
        ({"format": "tar"}, "not a virtkit backup"),
        ({"unknown": 1}, "manifest is invalid at unknown"),
        ({"snapshots": []}, "unlisted snapshot 'snap0'"),
        ({"image": None}, "image and its image tree do not match"),
        ({"files": [{"id": "a", "file": "a", "size": 1}, {"id": "a", "file": "b", "size": 1}]},
         "part 'a' twice"),
        ({"files": [{"id": "a", "file": "..", "size": 1}]}, "invalid at files.0.file"),
        ({"files": [{"id": "../a", "file": "a", "size": 1}]}, "invalid at files.0.id"),
        ({"files": [{"id": "a", "file": "a", "size": -1}]}, "invalid at files.0.size"),
    ],
)
def test_bad_manifests_are_refused(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(RejectedError, match=match):
        parse(manifest(**changes))


BASE = {"id": "base", "role": "base", "entries": 1, "bytes": 0}


@pytest.mark.parametrize(
    ("version", "trees", "kind", "match"),
    [
        (2, [BASE], "container", None),
        (1, [BASE], "container", "base tree does not fit"),  # version 1 has none
        (2, [BASE], "vm", "base tree does not fit"),
        (2, [BASE, {**BASE, "id": "base2"}], "container", "base tree does not fit"),
        (2, [{**BASE, "id": "other"}], "container", "base tree does not fit"),
        (2, [{**BASE, "state": "snap0"}], "container", "base tree does not fit"),
    ],
)
def test_a_base_tree_only_in_version_2_containers(
    version: int, trees: list[dict[str, Any]], kind: str, match: str | None
) -> None:
    document = manifest(version=version)
    document["trees"] += trees
    document["instance"]["kind"] = kind
    if match is None:
        assert [t.role for t in parse(document).trees][-1] == "base"
    else:
        with pytest.raises(RejectedError, match=match):
            parse(document)


def test_not_json_and_not_a_name() -> None:
    with pytest.raises(RejectedError, match="not JSON"):
        parse_manifest(b"\xff{", "b.tar")
    document = manifest()
    document["instance"]["name"] = "../etc"
    with pytest.raises(RejectedError, match="invalid instance name"):
        parse(document)
    document = manifest()
    document["snapshots"].append(dict(document["snapshots"][0]))
    with pytest.raises(RejectedError, match="snapshot 'snap0' twice"):
        parse(document)


def test_the_tree_digest_covers_every_attribute() -> None:
    info = tarfile.TarInfo("trees/upper/a")
    info.size, info.mode, info.uid, info.gid, info.mtime = 3, 0o644, 1, 2, 100
    base = tarinfo_line(info, "a", "", "c" * 64)
    changes = (("mode", 0o4644), ("uid", 0), ("gid", 0), ("mtime", 101), ("type", tarfile.DIRTYPE))
    for attribute, value in changes:
        changed = tarfile.TarInfo("trees/upper/a")
        for name in ("size", "mode", "uid", "gid", "mtime"):
            setattr(changed, name, getattr(info, name))
        setattr(changed, attribute, value)
        assert tarinfo_line(changed, "a", "", "c" * 64) != base, attribute
    info.pax_headers = {"SCHILY.xattr.user.x": "1"}
    assert tarinfo_line(info, "a", "", "c" * 64) != base
    assert tarinfo_line(info, "b", "", "c" * 64) != tarinfo_line(info, "a", "", "c" * 64)
    assert tarinfo_line(info, "a", "", "d" * 64) != tarinfo_line(info, "a", "", "c" * 64)


def test_ids_move_between_ranges() -> None:
    ids = IdRange(1_000_000, 2_000_000)
    assert ids.inner(1_000_005, ids.uid) == 5 and ids.inner(7, ids.uid) == 7
    assert ids.inner(5_000_000, ids.uid) == 65534  # outside the range: nobody
    assert ids.outer(5, ids.gid) == 2_000_005 and ids.outer(70_000, ids.gid) == 2_065_534


def test_file_capabilities() -> None:
    v2 = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    assert caps_v2(caps_v3(v2, 42)) == v2 and caps_v3(v2, 42)[-4:] == struct.pack("<I", 42)
    assert caps_v2(b"junk") == b"junk" and caps_v3(b"junk", 1) == b"junk"


def qcow2_header(*, snapshots: int = 0, incompatible: int = 0, backing: bytes = b"/img/base.qcow2") -> bytes:
    header = bytearray(65536)
    header[0:4] = b"QFI\xfb"
    struct.pack_into(">I", header, 4, 3)
    struct.pack_into(">I", header, 20, 16)  # 64 KiB clusters
    struct.pack_into(">Q", header, 24, 1 << 30)
    struct.pack_into(">I", header, 60, snapshots)
    struct.pack_into(">Q", header, 72, incompatible)
    struct.pack_into(">I", header, 100, 112)
    extensions = struct.pack(">II", 0xE2792ACA, 5) + b"qcow2\0\0\0" + struct.pack(">II", 0x6803F857, 8)
    extensions += b"features" + bytes(8)
    header[112 : 112 + len(extensions)] = extensions
    name_at = 112 + len(extensions)
    header[name_at : name_at + len(backing)] = backing
    struct.pack_into(">QI", header, 8, name_at, len(backing))
    return bytes(header)


def test_a_streamed_disk_names_no_backing_file() -> None:
    head, virtual = unlinked_header(qcow2_header()) or (b"", 0)
    assert virtual == 1 << 30 and head[:4] == b"QFI\xfb"
    assert struct.unpack_from(">QI", head, 8) == (0, 0)
    assert b"/img/base.qcow2" not in head and b"qcow2\0" not in head[112:]
    assert struct.unpack_from(">II", head, 112) == (0x6803F857, 8) and head[120:128] == b"features"
    assert struct.unpack_from(">II", head, 128) == (0, 0)  # then the end of the extensions


UNSTREAMABLE = [qcow2_header(snapshots=1), qcow2_header(incompatible=1), qcow2_header(incompatible=4),
                b"QFI\xfb" + bytes(10), b"raw data" * 20]  # fmt: skip


@pytest.mark.parametrize("header", UNSTREAMABLE)
def test_disks_that_cannot_be_streamed_as_they_are(header: bytes) -> None:
    assert unlinked_header(header) is None


def disk(part: str, state: str | None, base: str | None) -> dict[str, Any]:
    return {"id": part, "file": "root.qcow2", "state": state, "base": base, "size": 1, "virtual_size": 1}


@pytest.mark.parametrize(
    ("disks", "match"),
    [
        ([disk("root.qcow2", None, "root.qcow2@x")], "unknown base"),
        ([disk("root.qcow2@snap0", "snap0", "image"), disk("root.qcow2", None, "image")], "is not over"),
        ([disk("root.qcow2@snap0", "snap0", "image")], "out of order"),
        ([disk("root.qcow2", None, "image"), disk("root.qcow2@snap0", "snap0", "root.qcow2")],
         "out of order"),
    ],
)
def test_disk_states_must_chain(disks: list[dict[str, Any]], match: str) -> None:
    document = manifest(disks=disks)
    with pytest.raises(RejectedError, match=match):
        disk_plan(parse(document), "b.tar")
