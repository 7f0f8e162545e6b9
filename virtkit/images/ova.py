"""OVF packages: an OVA (one tar) or a bare OVF with its files beside it, read and checked.

An OVA's first member must be its .ovf descriptor (as DSP0243 says); a manifest (.mf: lines
``SHA256(name)= hex``, SHA1 and SHA512 too) and a certificate (.cert, not checked) may follow;
then the files. `descriptor` reads the first member only (for a plan); `extract` reads the whole
archive once, writing the disks the descriptor names into a directory (sparse), hashing every
member, and then checks: the descriptor is the one planned from, every disk came with the size
the References give, every manifest digest matches, and every disk is in the manifest when there
is one. A bare OVF's manifest (NAME.mf beside NAME.ovf) is checked the same way by `verify_files`.
Anything else in the archive is read past and not written; a link, a device, a name outside the
archive, a truncated archive are refused (package.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from virtkit.errors import RejectedError
from virtkit.images.appliance import MAX_DESCRIPTOR, MAX_DISKS, Hardware
from virtkit.images.detect import printable
from virtkit.images.package import BLOCK, copy_member, create, first_member, plain_limits, read_small, walk

MAX_MANIFEST = 1024 * 1024
ALGORITHMS = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")


def descriptor(source: Path) -> tuple[str, bytes]:
    """The name and bytes of the OVA's descriptor, its first member."""
    name, data = first_member(source, source.name, MAX_DESCRIPTOR)
    if not name.lower().endswith(".ovf") or "/" in name:
        raise _not_ova(source.name, name)
    return name, data


def _not_ova(label: str, name: str) -> RejectedError:
    return RejectedError(
        f"{label} is not an OVA: its first member is {printable(name)!r}, not the .ovf descriptor",
        hint="an OVA starts with its descriptor (DSP0243)",
    )


def _descriptor_member(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, label: str) -> bytes:
    if not name.lower().endswith(".ovf") or "/" in name:
        raise _not_ova(label, name)
    return read_small(tar, member, label, MAX_DESCRIPTOR)


def parse_manifest(data: bytes, label: str) -> dict[str, tuple[str, str]]:
    """A manifest's entries: file name -> (hashlib algorithm, lowercase hex digest)."""
    entries: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise RejectedError(
                f"{label}: line {number} of its manifest is not 'SHA256(file)= digest': "
                f"{printable(line, 80)!r}"
            )
        algorithm, name, digest = ALGORITHMS[match[1]], match[2].removeprefix("./"), match[3].lower()
        if len(digest) != hashlib.new(algorithm).digest_size * 2:
            raise RejectedError(
                f"{label}: the manifest's {match[1]} of {printable(name)!r} has the wrong length"
            )
        entries[name] = (algorithm, digest)
    return entries


@dataclass
class _Extraction:
    label: str
    dest: Path
    wanted: dict[str, int | None]  # disk file -> size its References give
    planned: bytes
    referenced: set[str]
    digests: dict[str, dict[str, str]] = field(default_factory=dict)
    manifest: dict[str, tuple[str, str]] | None = None
    written: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def visit(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        if not self.digests:
            data = _descriptor_member(tar, member, name, self.label)
            if data != self.planned:
                raise RejectedError(
                    f"{self.label} changed while it was being imported",
                    hint="import a copy that nothing else writes to",
                )
            self.digests[name] = _hash_all([data], ("sha1", "sha256", "sha512"))
            return
        if name.lower().endswith(".mf") and self.manifest is None and name not in self.referenced:
            data = read_small(tar, member, self.label, MAX_MANIFEST)
            self.manifest = parse_manifest(data, self.label)
            return
        algorithms = (
            ("sha1", "sha256", "sha512")
            if self.manifest is None
            else tuple({self.manifest[name][0]} if name in self.manifest else ())
        )
        hashers = {a: hashlib.new(a) for a in algorithms}
        fd = None
        if name in self.wanted:
            declared = self.wanted[name]
            if declared is not None and declared != member.size:
                raise RejectedError(
                    f"archive {self.label} is refused: {printable(name)!r} holds {member.size} "
                    f"bytes, its descriptor says {declared}"
                )
            path = self.dest / name
            fd = create(path, member.size)
            self.written[name] = path
        else:
            self.skipped.append(name)
        source = tar.extractfile(member)
        assert source is not None
        try:
            copy_member(
                source,
                member.size,
                fd,
                lambda chunk: _update(hashers.values(), chunk),
                self.label,
                name,
            )
        finally:
            if fd is not None:
                os.close(fd)
        self.digests[name] = {a: h.hexdigest() for a, h in hashers.items()}


def extract(
    source: Path, dest: Path, hardware: Hardware, planned: bytes
) -> tuple[dict[str, Path], list[str]]:
    """Extract the OVA's disks into the existing directory `dest` and check it (see the module's
    doc); the disk files by name, and notes on what was read past. The caller removes `dest`."""
    label = source.name
    wanted = {disk.file: disk.size for disk in hardware.disks}
    job = _Extraction(label, dest, wanted, planned, set(wanted))
    walk(source, label, plain_limits(source, MAX_DISKS * 4 + 16), job.visit)
    missing = [name for name in wanted if name not in job.written]
    if missing:
        raise RejectedError(
            f"{label} does not hold disk {printable(missing[0])!r}, which its descriptor names",
            hint="the archive is incomplete: export the VM again",
        )
    if job.manifest is not None:
        check_manifest(job.manifest, job.digests, set(wanted), label)
    notes = [f"{printable(name)}: not a disk of the VM, not imported" for name in job.skipped]
    return job.written, notes + ([] if job.manifest else ["no manifest: the files' digests were not checked"])


def check_manifest(
    manifest: dict[str, tuple[str, str]], digests: dict[str, dict[str, str]], disks: Iterable[str], label: str
) -> None:
    """RejectedError unless every manifest entry names a file present with that digest, and every
    disk is listed."""
    for name, (algorithm, digest) in manifest.items():
        if name not in digests:
            raise RejectedError(
                f"{label}: its manifest lists {printable(name)!r}, which is not in the package"
            )
        if digests[name].get(algorithm) != digest:
            raise RejectedError(
                f"{label}: the {algorithm.upper()} digest of {printable(name)!r} is not the one its "
                "manifest gives: the file is corrupt or was changed",
                hint="copy the appliance again from where it was exported",
            )
    for name in disks:
        if name not in manifest:
            raise RejectedError(f"{label}: disk {printable(name)!r} is not in its manifest")


def verify_files(descriptor_path: Path, data: bytes, files: dict[str, Path]) -> list[str]:
    """A bare OVF's manifest check (NAME.mf beside it, if any): notes for the plan."""
    manifest_path = descriptor_path.with_suffix(".mf")
    if not manifest_path.is_file():
        return ["no manifest: the files' digests were not checked"]
    label = descriptor_path.name
    if manifest_path.stat().st_size > MAX_MANIFEST:
        raise RejectedError(f"{label}: its manifest {manifest_path.name} is larger than a manifest may be")
    manifest = parse_manifest(manifest_path.read_bytes(), label)
    digests = {descriptor_path.name: _hash_all([data], ("sha1", "sha256", "sha512"))}
    for name, path in files.items():
        algorithm = manifest.get(name, ("sha256", ""))[0]
        digests[name] = _hash_file(path, algorithm)
    check_manifest(manifest, digests, files, label)
    return [f"manifest {manifest_path.name}: every digest matches"]


def _update(hashers: Iterable[hashlib._Hash], chunk: bytes) -> None:
    for hasher in hashers:
        hasher.update(chunk)


def _hash_all(chunks: Iterable[bytes], algorithms: Iterable[str]) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algorithms}
    for chunk in chunks:
        for hasher in hashers.values():
            hasher.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _hash_file(path: Path, algorithm: str) -> dict[str, str]:
    hasher = hashlib.new(algorithm)
    with path.open("rb") as file:
        while chunk := file.read(BLOCK):
            hasher.update(chunk)
    return {algorithm: hasher.hexdigest()}
