"""The tiny root tree: busybox checks, applet links, files and modes, no device nodes, agent hook."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from virtkit.errors import HostCapabilityError, RejectedError
from virtkit.images.tinyinit import AGENT_PATH, guest_files
from virtkit.images.tinyroot import inspect_busybox, make_rootfs

from .elfbuild import AARCH64, X86_64, make_elf

BANNER = b"\0BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\0"


def _busybox(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "busybox"
    path.write_bytes(data)
    return path


def test_busybox_version_is_read_from_the_binary(tmp_path: Path) -> None:
    info = inspect_busybox(_busybox(tmp_path, make_elf(X86_64) + BANNER), "x86_64")
    assert (info.version, info.build) == ("1.35.0", "Debian 1:1.35.0-4+deb12u1+b1")


def test_dynamic_or_foreign_busybox_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HostCapabilityError, match="not a statically linked") as caught:
        inspect_busybox(_busybox(tmp_path, make_elf(X86_64, interp=True) + BANNER), "x86_64")
    assert "busybox-static" in (caught.value.hint or "")
    with pytest.raises(HostCapabilityError, match="for x86_64"):
        inspect_busybox(_busybox(tmp_path, make_elf(AARCH64) + BANNER), "x86_64")
    with pytest.raises(RejectedError, match="version banner"):
        inspect_busybox(_busybox(tmp_path, make_elf(X86_64)), "x86_64")


def _tree(tmp_path: Path, agent: str | None = None) -> Path:
    dest = tmp_path / "rootfs"
    busybox = _busybox(tmp_path, make_elf() + BANNER)
    applets = ["bin/sh", "bin/ls", "sbin/init", "usr/bin/awk", "bin/busybox", "usr/sbin/nologin"]
    assert make_rootfs(dest, busybox=busybox, applets=applets, files=guest_files("tiny", "NAME=x\n"),
                       agent=agent) == 5
    return dest


def test_applets_are_absolute_links_to_busybox(tmp_path: Path) -> None:
    dest = _tree(tmp_path)
    assert (dest / "bin" / "busybox").is_file() and not (dest / "bin" / "busybox").is_symlink()
    for applet in ("bin/sh", "sbin/init", "usr/bin/awk"):
        assert os.readlink(dest / applet) == "/bin/busybox"


def test_tree_has_scripts_modes_and_no_devices(tmp_path: Path) -> None:
    dest = _tree(tmp_path)
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((dest / "root").stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "etc/init.d/rcS").stat().st_mode) == 0o755
    assert (dest / "etc/hostname").read_text() == "tiny\n"
    assert os.readlink(dest / "var/run") == "../run"
    for mountpoint in ("dev", "proc", "sys", "run"):
        assert (dest / mountpoint).is_dir()
    assert list((dest / "dev").iterdir()) == []
    for path in dest.rglob("*"):
        mode = path.lstat().st_mode
        assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode), path
    assert not (dest / AGENT_PATH.lstrip("/")).exists()


def test_agent_hook_installs_the_agent(tmp_path: Path) -> None:
    dest = _tree(tmp_path, agent="#!/bin/sh\nexec cat\n")
    agent = dest / AGENT_PATH.lstrip("/")
    assert agent.read_text() == "#!/bin/sh\nexec cat\n"
    assert stat.S_IMODE(agent.stat().st_mode) == 0o755
