"""debootstrap's command line, progress parsing, mount discovery, and the tree cache."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from virtkit.errors import StoreError
from virtkit.images import debiancache, debootstrap
from virtkit.images.debiancache import cached_tree
from virtkit.images.debootstrap import DebootstrapProgress, debootstrap_argv, mounts_under, remove_tree

# Lines as debootstrap 1.0.128 prints them (bookworm, .debs partly from --cache-dir).
OUTPUT = """\
I: Retrieving InRelease
I: Checking Release signature
I: Valid Release signature (key id 4D64FEC119C2029067D6E791F8D2585B8783D481)
I: Retrieving Packages
I: Validating Packages
I: Resolving dependencies of required packages...
I: Resolving dependencies of base packages...
I: Checking component main on http://deb.debian.org/debian...
I: Validating base-files 12.4+deb12u15
I: Retrieving libc6 2.36-9+deb12u10
I: Validating libc6 2.36-9+deb12u10
I: Retrieving systemd 252.38-1~deb12u1
I: Validating systemd 252.38-1~deb12u1
I: Chosen extractor for .deb packages: dpkg-deb
I: Extracting base-files...
I: Installing core packages...
I: Unpacking required packages...
I: Unpacking base-files...
I: Unpacking libc6:amd64...
I: Configuring required packages...
I: Configuring base-files...
I: Unpacking the base system...
I: Unpacking systemd...
I: Configuring the base system...
I: Configuring libc6:amd64...
I: Configuring systemd...
I: Base system installed successfully.
"""


def test_argv() -> None:
    argv = debootstrap_argv(
        Path("/c/tree"), release="bookworm", debarch="amd64", mirror="http://deb.debian.org/debian",
        include=["systemd", "cloud-init"], cache_dir=Path("/c/debs"), keyring=Path("/k.gpg"),
    )
    assert argv == [
        "debootstrap", "--variant=minbase", "--arch=amd64", "--merged-usr", "--cache-dir=/c/debs",
        "--keyring=/k.gpg", "--include=systemd,cloud-init", "bookworm", "/c/tree", "http://deb.debian.org/debian",
    ]
    bare = debootstrap_argv(Path("/t"), release="sid", debarch="arm64", mirror="http://m", include=[],
                            cache_dir=Path("/d"))
    assert not any(a.startswith(("--include", "--keyring")) for a in bare)


def test_progress_lines() -> None:
    parser = DebootstrapProgress()
    reports = [r for r in map(parser.feed, OUTPUT.splitlines()) if r is not None]
    assert reports[0] == ("debootstrap: downloading packages (1)", None)
    assert ("debootstrap: downloading packages (3)", None) in reports
    assert parser.packages == {"base-files", "libc6", "systemd"}
    # the "the base system..." and "required packages..." headers are not packages
    assert ("debootstrap: unpacking packages", pytest.approx(1 / 3)) in reports
    assert reports[-1] == ("debootstrap: configuring packages", 1.0)
    assert all(f is None or 0 < f <= 1 for _, f in reports)
    assert parser.feed("W: Failure while configuring base packages.") is None


MOUNTINFO = """\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:5 / /build/my\\040tree/proc rw - proc proc rw
91 22 0:6 / /build/my\\040tree/dev rw - tmpfs virtkit-dev rw
92 91 0:7 / /build/my\\040tree/dev/pts rw - devpts devpts rw
93 22 0:8 / /build/my\\040tree2/proc rw - proc proc rw
"""


def test_mounts_under_decodes_escapes_and_orders_deepest_first() -> None:
    points = mounts_under(Path("/build/my tree"), MOUNTINFO)
    assert points[0] == Path("/build/my tree/dev/pts")
    assert set(points) == {Path("/build/my tree") / sub for sub in ("proc", "dev", "dev/pts")}
    assert mounts_under(Path("/elsewhere"), MOUNTINFO) == []


def test_remove_tree_never_deletes_through_a_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    (tree / "proc").mkdir(parents=True)
    monkeypatch.setattr(debootstrap, "mounts_under", lambda path, mountinfo=None: [tree / "proc"])
    monkeypatch.setattr(debootstrap, "run_tool", lambda *a, **k: None)
    with pytest.raises(StoreError, match="cannot unmount"):
        remove_tree(tree)
    assert tree.exists()


def test_remove_tree_of_nothing() -> None:
    remove_tree(Path("/nonexistent/virtkit/tree"))


def _maker(calls: list[Path], fail: bool = False) -> debiancache.TreeMaker:
    def make(tree: Path) -> None:
        calls.append(tree)
        (tree / "etc").mkdir()
        (tree / "etc/os-release").write_text("ID=debian\n")
        if fail:
            raise RuntimeError("debootstrap broke")

    return make


def test_cache_builds_once_then_hits(tmp_path: Path) -> None:
    calls: list[Path] = []
    info = {"release": "bookworm"}
    with cached_tree(tmp_path, "bookworm-amd64-x", _maker(calls), info=info) as (tree, hit):
        assert not hit and (tree / "etc/os-release").is_file()
    with cached_tree(tmp_path, "bookworm-amd64-x", _maker(calls)) as (again, hit):
        assert hit and again == tree
    assert len(calls) == 1
    recorded = json.loads((tree.parent / "info.json").read_text())
    assert recorded["release"] == "bookworm" and recorded["created"] <= time.time()
    assert [p.name for p in (tmp_path / "debian/trees").iterdir() if p.name.startswith(".tmp")] == []


def test_failed_build_leaves_no_entry(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), cached_tree(tmp_path, "k", _maker([], fail=True)):
        pass
    assert sorted(p.name for p in (tmp_path / "debian/trees").iterdir()) == []


def test_stale_or_refreshed_entry_is_rebuilt(tmp_path: Path) -> None:
    calls: list[Path] = []
    with cached_tree(tmp_path, "k", _maker(calls)) as (tree, _hit):
        pass
    info = tree.parent / "info.json"
    info.write_text(json.dumps({"created": time.time() - debiancache.MAX_AGE - 1}))
    with cached_tree(tmp_path, "k", _maker(calls)) as (_tree, hit):
        assert not hit
    with cached_tree(tmp_path, "k", _maker(calls), refresh=True) as (_tree, hit):
        assert not hit
    assert len(calls) == 3
    assert sorted(p.name for p in (tmp_path / "debian/trees").iterdir()) == ["k"]


def test_leftover_work_of_a_killed_build_is_removed(tmp_path: Path) -> None:
    leftover = tmp_path / "debian/trees/.tmp-k-deadbeef/tree"
    leftover.mkdir(parents=True)
    os.symlink("/etc", leftover / "etc")  # removal must not follow links out of the tree
    with cached_tree(tmp_path, "k", _maker([])):
        pass
    assert not leftover.parent.exists()
    assert Path("/etc/hostname").exists() or Path("/etc").is_dir()


def test_other_stale_entries_are_pruned_when_a_tree_is_made(tmp_path: Path) -> None:
    with cached_tree(tmp_path, "old", _maker([])) as (old, _hit):
        pass
    with cached_tree(tmp_path, "young", _maker([])):
        pass
    (old.parent / "info.json").write_text(json.dumps({"created": time.time() - debiancache.MAX_AGE - 1}))
    with cached_tree(tmp_path, "new", _maker([])):
        pass
    assert sorted(p.name for p in (tmp_path / "debian/trees").iterdir()) == [
        "new", "young"
    ]
