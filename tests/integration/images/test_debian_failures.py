"""Failed Debian builds leave nothing behind: no mounts, no cache entry, no work directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from virtkit.errors import ToolError
from virtkit.images.chroot import chroot_session, run_in_chroot
from virtkit.images.debian import build_debian
from virtkit.images.debootstrap import mounts_under

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root"),
]


def _fake_tree(path: Path) -> Path:
    for sub in ("proc", "dev", "etc", "usr/sbin", "usr/bin", "bin"):
        (path / sub).mkdir(parents=True)
    (path / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    shutil.copy(shutil.which("busybox") or "/bin/busybox", path / "bin/busybox")
    return path


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed")
def test_chroot_session_takes_everything_down_after_a_failure(tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path / "tree")
    with pytest.raises(ToolError), chroot_session(tree):
        assert {p.name for p in mounts_under(tree)} == {"proc", "dev", "pts"}
        assert (tree / "etc/resolv.conf").is_file() and not (tree / "etc/resolv.conf").is_symlink()
        assert (tree / "usr/sbin/policy-rc.d").read_text().endswith("exit 101\n")
        run_in_chroot(tree, ["/bin/busybox", "sh", "-c", "echo x > /dev/null && exit 3"], timeout=30,
                      what="failing on purpose")
    assert mounts_under(tree) == []
    assert os.readlink(tree / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert not (tree / "usr/sbin/policy-rc.d").exists()
    assert sorted(p.name for p in (tree / "etc").iterdir()) == ["resolv.conf"]
    assert list((tree / "dev").iterdir()) == []


def test_unknown_package_fails_cleanly(tmp_path: Path) -> None:
    staging, cache = tmp_path / "staging", tmp_path / "cache"
    staging.mkdir()
    with pytest.raises(ToolError, match="debootstrap failed") as info:
        build_debian(staging, cache=cache, flavour="container", packages=["virtkit-no-such-package"])
    assert "virtkit-no-such-package" in info.value.stderr
    trees = cache / "debian/trees"
    assert [p.name for p in trees.iterdir() if not p.name.endswith(".lock")] == []
    assert mounts_under(tmp_path) == []
    assert list(staging.iterdir()) == []
