"""foreground.find_command: a command is looked up in the image's tree the way the container would
see it — PATH, symlinks resolved inside the rootfs (never on the host), loops refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.drivers.oci.foreground import find_command
from virtkit.errors import CommandNotExecutableError, CommandNotFoundError

PATH = ("PATH=/usr/bin:/bin",)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    busybox = root / "bin" / "busybox"
    busybox.write_text("#!")
    busybox.chmod(0o755)
    os.symlink("busybox", root / "bin" / "sh")  # relative
    os.symlink("/bin/busybox", root / "usr" / "bin" / "env")  # absolute: inside the rootfs
    os.symlink("../../bin/busybox", root / "usr" / "bin" / "up")
    os.symlink("/../../../../bin/busybox", root / "usr" / "bin" / "above")  # .. stops at the root
    os.symlink("loop2", root / "bin" / "loop1")
    os.symlink("loop1", root / "bin" / "loop2")
    (root / "bin" / "data").write_text("not executable")
    return root


@pytest.mark.parametrize("command", ["sh", "env", "up", "above", "/bin/sh", "bin/busybox", "/usr/bin/env"])
def test_commands_the_image_has(rootfs: Path, command: str) -> None:
    find_command(rootfs, command, PATH)


@pytest.mark.parametrize("command", ["nosuch", "loop1", "/nosuch/sh", "busybox/x"])
def test_commands_it_has_not(rootfs: Path, command: str) -> None:
    with pytest.raises(CommandNotFoundError, match="command not found in the image") as raised:
        find_command(rootfs, command, PATH)
    assert raised.value.exit_code == 127


@pytest.mark.parametrize(("command", "why"), [("data", "is not executable"), ("/bin", "is a directory"),
                                              ("/bin/data", "is not executable")])  # fmt: skip
def test_what_cannot_be_executed(rootfs: Path, command: str, why: str) -> None:
    with pytest.raises(CommandNotExecutableError, match=why) as raised:
        find_command(rootfs, command, ("PATH=/bin",))
    assert raised.value.exit_code == 126


def test_a_link_to_a_host_path_is_resolved_inside(rootfs: Path, tmp_path: Path) -> None:
    host_only = tmp_path / "host-tool"
    host_only.write_text("#!")
    host_only.chmod(0o755)
    os.symlink(str(host_only), rootfs / "bin" / "escape")  # exists on the host, not in the image
    with pytest.raises(CommandNotFoundError):
        find_command(rootfs, "escape", PATH)


def test_path_comes_from_the_environment(rootfs: Path) -> None:
    find_command(rootfs, "busybox", ("HOME=/", "PATH=/bin"))
    with pytest.raises(CommandNotFoundError):
        find_command(rootfs, "busybox", ("PATH=/usr/bin",))
