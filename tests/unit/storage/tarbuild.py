"""Build tar archives for tests, hostile ones included, entirely in memory."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import subprocess
import tarfile
from pathlib import Path


def reg(
    name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, 1_600_000_000
    return info, data


def special(
    name: str, kind: bytes, linkname: str = "", mode: int = 0o755, uid: int = 0
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.uid, info.mtime = kind, linkname, mode, uid, 1_600_000_000
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, b""


def directory(name: str, mode: int = 0o755, uid: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    return special(name, tarfile.DIRTYPE, mode=mode, uid=uid)


def symlink(name: str, target: str, uid: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    return special(name, tarfile.SYMTYPE, target, mode=0o777, uid=uid)


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return special(name, tarfile.LNKTYPE, target, mode=0o644)


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "xz":
        return lzma.compress(data)
    if kind == "bzip2":
        return bz2.compress(data)
    if kind == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    assert kind == "none"
    return data


def write(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]], kind: str = "none") -> Path:
    path.write_bytes(compress(tar_bytes(entries), kind))
    return path
