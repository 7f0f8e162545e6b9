"""Builders for disk-import tests: a recognisable raw disk, its conversions, and hostile images.

Everything is made here with qemu-img and Python; nothing is downloaded.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

from virtkit.units import KiB, MiB

SIZE = 64 * MiB
# (offset, length) of the random blocks in the raw disk: aligned, unaligned, across clusters, the end.
BLOCKS = [
    (0, 512 * KiB),
    (MiB + 4096, 300 * KiB),
    (5 * MiB, 512 * KiB),
    (17 * MiB + 512, MiB),
    (33 * MiB + 65536, 64 * KiB),
    (63 * MiB, MiB),
]

# name -> (file name, qemu-img convert output options)
CONVERSIONS = {
    "qcow2": ("disk.qcow2", ["-O", "qcow2"]),
    "qcow2-compressed": ("packed.qcow2", ["-O", "qcow2", "-c"]),
    "vmdk": ("disk.vmdk", ["-O", "vmdk"]),
    "vmdk-stream": ("ova-disk.vmdk", ["-O", "vmdk", "-o", "subformat=streamOptimized"]),
    "vdi": ("disk.vdi", ["-O", "vdi"]),
    "vhd": ("disk.vhd", ["-O", "vpc", "-o", "subformat=dynamic,force_size=on"]),
    "vhd-fixed": ("fixed.vhd", ["-O", "vpc", "-o", "subformat=fixed,force_size=on"]),
    "vhdx": ("disk.vhdx", ["-O", "vhdx"]),
}


def qemu_img(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-img", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def make_raw(path: Path) -> Path:
    rng = random.Random(2024)
    with path.open("wb") as f:
        f.truncate(SIZE)
        for offset, length in BLOCKS:
            f.seek(offset)
            f.write(rng.randbytes(length))
    return path


def convert(raw: Path, kind: str, directory: Path) -> Path:
    name, options = CONVERSIONS[kind]
    target = directory / name
    done = qemu_img("convert", "-f", "raw", *options, raw, target)
    assert done.returncode == 0, done.stderr
    return target


def truncated(image: Path, directory: Path) -> Path:
    """A copy of `image` cut in half."""
    target = directory / f"half-{image.name}"
    data = image.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def patched(image: Path, target: Path, edits: dict[int, bytes]) -> Path:
    """A copy of `image` with bytes overwritten at the given offsets."""
    shutil.copyfile(image, target)
    with target.open("r+b") as f:
        for offset, data in edits.items():
            f.seek(offset)
            f.write(data)
    return target


def json_backing(qcow2: Path, directory: Path) -> Path:
    """A valid qcow2 whose header's backing file is a json: pseudo-filename (qemu-img won't make one)."""
    name = b'json:{"driver":"file","filename":"/etc/shadow"}'
    return patched(qcow2, directory / "json.qcow2", {0x1000: name, 8: struct.pack(">QI", 0x1000, len(name))})


def huge(qcow2: Path, directory: Path) -> Path:
    """A qcow2 whose header claims 100 PiB (qemu-img refuses to create one)."""
    return patched(qcow2, directory / "huge.qcow2", {24: struct.pack(">Q", 100 * 1024**5)})


def vmdk_reading_host_files(vmdk: Path, directory: Path) -> Path:
    """A sparse VMDK with capacity 0: QEMU then reads its embedded descriptor, here naming /etc/hostname."""
    head = vmdk.read_bytes()[:64]
    desc_offset = struct.unpack("<Q", head[28:36])[0]
    descriptor = (
        b'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 8 FLAT "/etc/hostname" 0\n'
    )
    return patched(vmdk, directory / "embedded.vmdk", {12: bytes(8), desc_offset * 512: descriptor})


def vhd_with_huge_table(vhd: Path, directory: Path) -> Path:
    """A dynamic VHD whose header asks for a 2 GiB block table: qemu-img would allocate it."""
    footer = vhd.read_bytes()[:512]
    header_at = struct.unpack(">Q", footer[16:24])[0]
    header = bytearray(vhd.read_bytes()[header_at : header_at + 1024])
    header[28:32] = struct.pack(">I", 0x1FFFFFFF)
    header[36:40] = bytes(4)
    header[36:40] = struct.pack(">I", ~sum(header) & 0xFFFFFFFF)
    return patched(vhd, directory / "greedy.vhd", {header_at: bytes(header)})


def two_extents(directory: Path) -> Path:
    for part in ("two-s001.vmdk", "two-s002.vmdk"):
        assert qemu_img("create", "-f", "vmdk", directory / part, "32M").returncode == 0
    descriptor = directory / "two.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        'createType="twoGbMaxExtentSparse"\n\n'
        'RW 65536 SPARSE "two-s001.vmdk"\nRW 65536 SPARSE "two-s002.vmdk"\n'
    )
    return descriptor


def make_iso(
    path: Path,
    *,
    volume_id: str = "VIRTKIT TEST",
    blocks: int = 32,
    el_torito: bool = True,
    primary: bool = True,
) -> Path:
    """A minimal ISO 9660 image: volume descriptors from sector 16, then recognisable content."""
    sector = 2048
    data = bytearray(blocks * sector)
    descriptors = []
    if primary:
        pvd = bytearray(sector)
        pvd[0:7] = b"\x01CD001\x01"
        pvd[40:72] = volume_id.ljust(32).encode()
        pvd[80:88] = struct.pack("<I", blocks) + struct.pack(">I", blocks)
        pvd[128:132] = struct.pack("<H", sector) + struct.pack(">H", sector)
        descriptors.append(pvd)
    if el_torito:
        boot = bytearray(sector)
        boot[0:7] = b"\x00CD001\x01"
        boot[7:30] = b"EL TORITO SPECIFICATION"
        descriptors.append(boot)
    descriptors.append(bytearray(b"\xffCD001\x01".ljust(sector, b"\0")))
    for index, descriptor in enumerate(descriptors):
        data[(16 + index) * sector : (17 + index) * sector] = descriptor
    data[-sector:] = random.Random(9).randbytes(sector)
    path.write_bytes(bytes(data))
    return path


def fifo(directory: Path) -> Path:
    path = directory / "pipe.img"
    os.mkfifo(path)
    return path
