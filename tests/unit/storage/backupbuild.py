"""Build virtkit backup archives for tests, good and hostile, with tarfile: a manifest, members,
and a checksum list computed the way `virtkit export` computes it (or deliberately not)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.unit.storage.tarbuild import compress
from virtkit.storage.backupformat import CHECKSUMS, MANIFEST
from virtkit.storage.backuptree import tarinfo_line

Member = tuple[tarfile.TarInfo, bytes]
FINGERPRINT = "ab" * 32
INIT = b"#!/bin/sh\nexec sleep 1000\n"
DATA = b"the container's data\n" * 100


def reg(name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, 1_600_000_000
    return info, data


def node(name: str, kind: bytes, *, link: str = "", mode: int = 0o755, device: tuple[int, int] = (0, 0),
         xattrs: dict[str, bytes] | None = None) -> Member:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, 1_600_000_000
    info.devmajor, info.devminor = device
    info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                        for k, v in (xattrs or {}).items()}  # fmt: skip
    return info, b""


@dataclass
class Backup:
    """An archive being made: its manifest (a dict, to be broken at will) and its members."""

    manifest: dict[str, Any]
    trees: dict[str, list[Member]] = field(default_factory=dict)  # tree id -> entries (names relative)
    parts: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # member name -> (kind, data)

    def tree_members(self, tree: str) -> list[Member]:
        prefix = f"trees/{tree}"
        members = []
        for info, data in self.trees[tree]:
            moved = copy.copy(info)
            moved.pax_headers = dict(info.pax_headers)
            moved.name = f"{prefix}/{info.name}" if info.name not in ("", ".") else prefix
            if info.type == tarfile.LNKTYPE:
                moved.linkname = f"{prefix}/{info.linkname}"
            members.append((moved, data))
        return members

    def checksums(self) -> dict[str, Any]:
        sums: dict[str, Any] = {"manifest": hashlib.sha256(self.manifest_bytes()).hexdigest(),
                                "disks": {}, "files": {}, "trees": {}}  # fmt: skip
        for name, (kind, data) in self.parts.items():
            sums[kind][name.split("/", 1)[1]] = hashlib.sha256(data).hexdigest()
        for tree, entries in self.trees.items():
            digest = hashlib.sha256()
            for info, data in entries:
                content = hashlib.sha256(data).hexdigest() if info.isreg() else ""
                relative = "" if info.name in ("", ".") else info.name
                digest.update(tarinfo_line(info, relative, info.linkname, content))
            sums["trees"][tree] = digest.hexdigest()
        return sums

    def refresh(self) -> None:
        """Recompute the manifest's tree entries (counts and sizes) from the trees."""
        self.manifest["trees"] = [
            {"id": tree, "role": "image" if tree == "image" else "upper",
             "state": tree.partition("@")[2] or None, "entries": len(entries),
             "bytes": sum(len(data) for info, data in entries if info.isreg())}
            for tree, entries in self.trees.items()
        ]  # fmt: skip

    def manifest_bytes(self) -> bytes:
        return json.dumps(self.manifest).encode()

    def members(self, sums: dict[str, Any] | None = None) -> list[Member]:
        out = [reg(MANIFEST, self.manifest_bytes())]
        out += self.tree_members("image") if "image" in self.trees else []
        out += [reg(name, data, mode=0o600) for name, (_kind, data) in self.parts.items()]
        out += [m for tree in self.trees if tree != "image" for m in self.tree_members(tree)]
        out.append(reg(CHECKSUMS, json.dumps(sums or self.checksums()).encode()))
        return out

    def write(self, path: Path, members: list[Member] | None = None, kind: str = "none") -> Path:
        path.write_bytes(compress(tar_of(members or self.members()), kind))
        return path


def version3(backup: Backup, stored: Callable[[int, bytes], dict[str, Any]] | None = None,
             sums: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
             version: int = 3) -> bytes:  # fmt: skip
    """`backup` as an uncompressed archive of format version 3 (or `version`), sealed as `virtkit
    export` seals it: the checksum list without a sha256 of each part, with the stored digest of
    every byte before it (storage/backupstored.py) — or what `stored(offset, data)` and `sums`
    make of them."""
    backup.manifest["version"] = version
    listed = {key: value for key, value in backup.checksums().items() if key not in ("disks", "files")}
    return sealed(backup.members(listed), stored, sums)


def sealed(members: list[Member], stored: Callable[[int, bytes], dict[str, Any]] | None = None,
           sums: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> bytes:  # fmt: skip
    """The uncompressed archive of `members`, the last its checksum list, that list given the
    stored digest of every byte before it (or what `stored` and `sums` make of them)."""
    original = json.loads(members[-1][1])
    listed = {key: value for key, value in original.items() if key != "stored"}
    data = tar_of([*members[:-1], reg(CHECKSUMS, b"{}")])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offset = tar.getmember(CHECKSUMS).offset  # where the list's header starts
    digest = {"bytes": offset, "sha256": hashlib.sha256(data[:offset]).hexdigest()}
    if "skipped" in (original.get("stored") or {}):  # version 4 (uncompressed: nothing left out)
        digest["skipped"] = []
    final = {**listed, "stored": stored(offset, data) if stored is not None else digest}
    checksums = reg(CHECKSUMS, json.dumps(sums(final) if sums is not None else final).encode())
    return tar_of([*members[:-1], checksums])


def zstd_version4(backup: Backup, big: str, stored: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                  big_flags: tuple[str, ...] = ()) -> bytes:  # fmt: skip
    """`backup` as a zstd archive of format version 4, sealed as `virtkit export` seals it: its
    member `big` (a part of at least OWN_RUN bytes) compressed by a zstd run of its own (with
    `big_flags`), left out of the stored digest, which covers every other byte before the run
    holding the checksum list — or what `stored(entry)` makes of that entry."""
    backup.manifest["version"] = 4
    listed = {key: value for key, value in backup.checksums().items() if key not in ("disks", "files")}
    plain = tar_of(backup.members(listed))
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        member, last = tar.getmember(big), tar.getmember(CHECKSUMS)
    start, end = member.offset_data, member.offset_data + member.size
    runs = [_zstd(plain[:start]), _zstd(plain[start:end], *big_flags), _zstd(plain[end : last.offset])]
    length = sum(len(run) for run in runs)
    skipped = [len(runs[0]), len(runs[0]) + len(runs[1])]
    entry = {"bytes": length, "sha256": hashlib.sha256(runs[0] + runs[2]).hexdigest(), "skipped": [skipped]}
    final = {**listed, "stored": stored(entry) if stored is not None else entry}
    members = [*backup.members(listed)[:-1], reg(CHECKSUMS, json.dumps(final).encode())]
    whole = tar_of(members)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        assert tar.getmember(CHECKSUMS).offset == last.offset
    return b"".join(runs) + _zstd(whole[last.offset :])


def _zstd(data: bytes, *flags: str) -> bytes:
    done = subprocess.run(["zstd", "-q", "-c", "-3", *flags], input=data, capture_output=True, check=True)
    return done.stdout


def tar_of(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def container_backup(name: str = "web") -> Backup:
    """A good backup of a stopped container `name` with a snapshot, from a minimal image."""
    image = [node(".", tarfile.DIRTYPE), node("rootfs", tarfile.DIRTYPE),
             node("rootfs/sbin", tarfile.DIRTYPE), reg("rootfs/sbin/init", INIT, 0o755),
             reg("rootfs/motd", b"welcome\n")]  # fmt: skip
    upper = [node(".", tarfile.DIRTYPE), node("root", tarfile.DIRTYPE, mode=0o700),
             reg("root/data", DATA, 0o600), node("root/link", tarfile.LNKTYPE, link="root/data", mode=0o600),
             node("motd", tarfile.CHRTYPE, mode=0),
             node("srv", tarfile.DIRTYPE, xattrs={"trusted.overlay.opaque": b"y"})]  # fmt: skip
    snap = [node(".", tarfile.DIRTYPE), reg("old", b"older\n")]
    trees = {"image": image, "upper": upper, "upper@snap0": snap}
    manifest: dict[str, Any] = {
        "format": "virtkit-backup", "version": 1, "virtkit": "0.1.0", "created_at": 1_700_000_000.0,
        "instance": {"name": name, "kind": "container", "arch": "x86_64", "cpus": 1.0, "memory": 268435456,
                     "config": {}, "labels": {}, "nics": [], "uuid": "12345678-1234-1234-1234-123456789abc",
                     "idmap": "idmapped"},
        "image": {"fingerprint": FINGERPRINT, "name": "mini", "kinds": ["container"], "arch": "x86_64",
                  "format": "rootfs", "aliases": ["mini"], "files": {"rootfs": "rootfs"},
                  "properties": {"init": "/sbin/init", "os": "busybox"}},
        "snapshots": [{"name": "snap0", "created_at": 1_700_000_000.0, "size": 4096, "files": ["upper"],
                       "origin": "0" * 32}],
        "disks": [], "files": [], "trees": [],
    }  # fmt: skip
    backup = Backup(manifest, trees)
    backup.refresh()
    return backup

