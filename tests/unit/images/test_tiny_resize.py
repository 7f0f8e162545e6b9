"""Growing the tiny VM's root filesystem: what the initramfs carries (resize2fs, its libraries and
loader) and the initramfs's grow logic, run by busybox's shell against real ext4 images and a
fake /sys, with a stand-in resize2fs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from virtkit.errors import HostCapabilityError
from virtkit.images import tinyresize
from virtkit.images.tinyinit import GROW_MIN, INITRAMFS_INIT
from virtkit.images.tinyresize import RESIZE2FS, host_files, interpreter, needed, parse_ldd
from virtkit.units import MiB

from .elfbuild import make_elf

BUSYBOX = shutil.which("busybox")
HOST_RESIZE2FS = Path("/usr/sbin/resize2fs")
LDD = """\
\tlinux-vdso.so.1 (0x00007ffd5a7f1000)
\tlibe2p.so.2 => /lib/x86_64-linux-gnu/libe2p.so.2 (0x00007f1c8c9f2000)
\tlibext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x00007f1c8c986000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1c8c7a5000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f1c8ca21000)
"""


def test_ldd_output_gives_libraries_then_the_loader_without_the_vdso() -> None:
    assert parse_ldd(LDD) == [
        "/lib/x86_64-linux-gnu/libe2p.so.2",
        "/lib/x86_64-linux-gnu/libext2fs.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    with pytest.raises(HostCapabilityError, match=r"libext2fs\.so\.2 => not found"):
        parse_ldd("\tlibext2fs.so.2 => not found\n")


def test_elf_without_sections_or_interpreter() -> None:
    static = make_elf()
    assert needed(static) == [] and interpreter(static) is None
    assert interpreter(make_elf(interp=True)) == "/lib64/ld-linux-x86-64.so.2"
    assert needed(b"not an elf") == []


@pytest.mark.skipif(not HOST_RESIZE2FS.is_file(), reason="needs e2fsprogs")
def test_the_host_resize2fs_comes_with_what_it_loads() -> None:
    data = HOST_RESIZE2FS.read_bytes()
    assert {"libext2fs.so.2", "libc.so.6"} <= set(needed(data))  # DT_NEEDED, as a foreign build reads it
    files = host_files(HOST_RESIZE2FS)
    paths = [path for path, _, _ in files]
    assert paths[0] == RESIZE2FS and files[0][1] == data
    loader = interpreter(data)
    assert loader is not None and loader.lstrip("/") in paths
    for name in needed(data):
        assert any(path.endswith("/" + name) for path in paths), name
    assert all(not path.startswith("/") and mode == 0o755 for path, _, mode in files)


def test_a_foreign_build_takes_debian_s_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    called: list[tuple[Path, str]] = []
    monkeypatch.setattr(tinyresize, "debian_files", lambda cache, arch: called.append((cache, arch)) or [])
    foreign = "aarch64" if tinyresize.platform.machine() != "aarch64" else "x86_64"
    assert tinyresize.resize_files(tmp_path, foreign) == []
    assert called == [(tmp_path, foreign)]


# --- the initramfs's grow logic -----------------------------------------------------------------


def _grow_script(tmp: Path) -> str:
    """fs_bytes, centiseconds and grow_root from the real /init, reading a fake /sys/class/block."""
    start = INITRAMFS_INIT.index("fs_bytes() {")
    end = INITRAMFS_INIT.index('if [ -n "$found" ]; then', start)
    return INITRAMFS_INIT[start:end].replace("/sys/class/block/", f"{tmp}/block/")


def _ext4(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        handle.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-I", "256", "-i", "8192", str(path)],
                   check=True, timeout=30)


def _run(tmp: Path, device: Path, disk: int, resize2fs: str) -> subprocess.CompletedProcess[str]:
    (tmp / "block" / device.name).mkdir(parents=True, exist_ok=True)
    (tmp / "block" / device.name / "size").write_text(f"{disk // 512}\n")
    (tmp / "bin").mkdir(exist_ok=True)
    (tmp / "bin" / "resize2fs").write_text(f"#!/bin/sh\necho \"resize2fs $*\" >> {tmp}/calls\n{resize2fs}\n")
    (tmp / "bin" / "resize2fs").chmod(0o755)
    script = _grow_script(tmp) + f'grow_root "{device}"\n'
    assert BUSYBOX is not None
    return subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True, timeout=20,
                          env={"PATH": f"{tmp}/bin:/usr/sbin:/usr/bin:/sbin:/bin"})


needs_tools = pytest.mark.skipif(BUSYBOX is None or shutil.which("mkfs.ext4") is None,
                                 reason="needs busybox and e2fsprogs")


@needs_tools
def test_the_superblock_gives_the_filesystem_size(tmp_path: Path) -> None:
    image = tmp_path / "vda"
    _ext4(image, 64 * MiB)
    assert BUSYBOX is not None
    done = subprocess.run([BUSYBOX, "sh", "-c", _grow_script(tmp_path) + f'fs_bytes "{image}" && echo $size'],
                          capture_output=True, text=True, timeout=20)
    assert done.stdout == f"{64 * MiB}\n", done.stderr
    image.write_bytes(b"\0" * 4096)  # no ext4 superblock: no size, nothing grown
    done = subprocess.run([BUSYBOX, "sh", "-c", _grow_script(tmp_path) + f'fs_bytes "{image}" || echo none'],
                          capture_output=True, text=True, timeout=20)
    assert done.stdout == "none\n"


@needs_tools
def test_a_bigger_disk_is_grown_and_said_on_the_console(tmp_path: Path) -> None:
    image = tmp_path / "vda"
    _ext4(image, 64 * MiB)
    # The stand-in does what resize2fs would: a filesystem filling the (fake) 256 MiB disk.
    done = _run(tmp_path, image, 256 * MiB, f"mkfs.ext4 -q -F -b 4096 {image} 65536")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "calls").read_text() == f"resize2fs {image}\n"
    lines = done.stdout.splitlines()
    assert lines[0] == f"virtkit: growing the root filesystem on {image} from 64 MiB to its disk's 256 MiB"
    assert lines[1].startswith(f"virtkit: root filesystem on {image} grown online to 256 MiB in ")


@needs_tools
def test_a_disk_the_filesystem_fills_is_left_alone(tmp_path: Path) -> None:
    image = tmp_path / "vda"
    _ext4(image, 64 * MiB)
    done = _run(tmp_path, image, 64 * MiB + GROW_MIN - 4096, "exit 0")  # a tail too small to bother
    assert done.returncode == 0 and done.stdout == "" and not (tmp_path / "calls").exists()


@needs_tools
def test_a_failed_resize_is_said_and_the_boot_goes_on(tmp_path: Path) -> None:
    image = tmp_path / "vda"
    _ext4(image, 64 * MiB)
    done = _run(tmp_path, image, 1024 * MiB, "echo 'Permission denied to resize filesystem' >&2; exit 1")
    assert done.returncode == 0
    assert "virtkit: resize2fs: Permission denied to resize filesystem" in done.stdout
    assert f"virtkit: cannot grow the root filesystem on {image}; it keeps its 64 MiB" in done.stderr


def test_init_grows_the_root_after_mounting_it_and_before_switching() -> None:
    mounted = INITRAMFS_INIT.index('mount -t ext4 -o rw,noatime "$found" /newroot')
    grown = INITRAMFS_INIT.index('grow_root "$found"')
    assert mounted < grown < INITRAMFS_INIT.index("exec switch_root")
