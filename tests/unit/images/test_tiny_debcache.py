"""The private apt root and the unpacked-package cache, with apt and dpkg-deb replaced by fakes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from virtkit.errors import HostCapabilityError, NotFoundError, ToolError
from virtkit.images import debcache
from virtkit.images.debcache import AptRoot, cached_versions, debian_arch, fetch_unpacked, unpacked_path

SHOW = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Description: Linux for 64-bit PCs (meta-package)
 This package depends on the latest Linux kernel.

Package: linux-image-amd64
Version: 6.1.170-3
"""


class FakeApt:
    """Records tool calls; `download` makes a .deb, `dpkg-deb -x` makes a tree, both optionally fail."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail: str | None = None

    def __call__(self, argv: Sequence[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        args = [str(a) for a in argv]
        self.calls.append(args)
        verb = next(a for a in args if a in ("update", "show", "download", "-x"))
        if verb == self.fail:
            raise ToolError(f"{verb} failed", argv=args)
        if verb == "show":
            return subprocess.CompletedProcess(args, 0, SHOW, "")
        if verb == "update":
            lists = Path(next(a for a in args if a.startswith("Dir::State=")).split("=", 1)[1]) / "lists"
            (lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4").write_text("x")
        if verb == "download":
            (kwargs["cwd"] / "pkg_1_amd64.deb").write_bytes(b"deb")
        if verb == "-x":
            (Path(args[-1]) / "boot").mkdir(parents=True)
        return subprocess.CompletedProcess(args, 0, "", "")


@pytest.fixture
def apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeApt:
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"k")
    monkeypatch.setattr(debcache, "KEYRING", keyring)
    fake = FakeApt()
    monkeypatch.setattr(debcache, "run_tool", fake)
    return fake


def test_architectures_map_to_debian_names() -> None:
    assert debian_arch("x86_64") == "amd64" and debian_arch("aarch64") == "arm64"
    with pytest.raises(HostCapabilityError, match="riscv64"):
        debian_arch("riscv64")


def test_private_root_never_points_at_the_host_configuration(tmp_path: Path, apt: FakeApt) -> None:
    root = AptRoot(tmp_path / "cache", "arm64")
    root.prepare()
    sources = (root.dir / "sources.list").read_text()
    assert "bookworm main" in sources and "bookworm-security main" in sources
    assert f"signed-by={debcache.KEYRING}" in sources
    options = root.options()
    values = dict(o.split("=", 1) for o in options if o != "-o")
    assert values["APT::Architecture"] == "arm64" and values["APT::Architectures"] == "arm64"
    for key in ("Dir::Etc::SourceList", "Dir::Etc::SourceParts", "Dir::State", "Dir::State::status",
                "Dir::Cache"):
        assert values[key].startswith(str(root.dir)), key
    assert (root.dir / "state" / "status").read_text() == ""


def test_missing_keyring_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debcache, "KEYRING", tmp_path / "absent.gpg")
    with pytest.raises(HostCapabilityError) as caught:
        AptRoot(tmp_path, "amd64").prepare()
    assert "debian-archive-keyring" in (caught.value.hint or "")


def test_lists_are_fetched_once_then_reused(tmp_path: Path, apt: FakeApt) -> None:
    root = AptRoot(tmp_path, "amd64")
    root.refresh()
    root.refresh()
    assert [c for c in apt.calls if "update" in c] and len([c for c in apt.calls if "update" in c]) == 1


def test_stale_lists_survive_a_failed_update(tmp_path: Path, apt: FakeApt) -> None:
    root = AptRoot(tmp_path, "amd64")
    root.refresh()
    listing = next(root.lists.glob("*_Packages*"))
    old = time.time() - 3 * 24 * 3600
    os.utime(listing, (old, old))
    apt.fail = "update"
    root.refresh()  # offline: warns, keeps the old lists
    assert listing.exists()
    listing.unlink()
    with pytest.raises(ToolError):
        root.refresh()  # nothing to fall back on


def test_show_reads_the_candidate_stanza(tmp_path: Path, apt: FakeApt) -> None:
    fields = AptRoot(tmp_path, "amd64").show("linux-image-amd64")
    assert fields["Version"] == "6.1.192-2"
    assert fields["Depends"] == "linux-image-6.1.0-56-amd64 (= 6.1.192-2)"


def test_show_of_an_unknown_package(tmp_path: Path, apt: FakeApt, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debcache, "run_tool", lambda argv, **kw: subprocess.CompletedProcess(argv, 0, "", ""))
    with pytest.raises(NotFoundError, match="no package nope"):
        AptRoot(tmp_path, "amd64").show("nope")


def test_fetch_unpacks_once_and_runs_the_finisher(tmp_path: Path, apt: FakeApt) -> None:
    root = AptRoot(tmp_path, "amd64")
    finished: list[Path] = []
    path = fetch_unpacked(root, "busybox-static", "1:1.35.0-4", finish=finished.append)
    assert path == unpacked_path(tmp_path, "busybox-static", "1:1.35.0-4", "amd64")
    assert path.name == "busybox-static_1%3a1.35.0-4_amd64" and (path / "boot").is_dir()
    assert len(finished) == 1 and not list(path.glob("*.deb"))
    calls = len(apt.calls)
    assert fetch_unpacked(root, "busybox-static", "1:1.35.0-4") == path
    assert len(apt.calls) == calls  # warm: no download, no unpack
    assert cached_versions(tmp_path, "busybox-static", "amd64") == [path]


@pytest.mark.parametrize("failing", ["download", "-x", "finish"])
def test_a_failed_fetch_leaves_nothing_in_the_cache(tmp_path: Path, apt: FakeApt, failing: str) -> None:
    def finish(_tree: Path) -> None:
        raise ToolError("depmod failed")

    apt.fail = failing
    with pytest.raises(ToolError):
        fetch_unpacked(AptRoot(tmp_path, "amd64"), "linux-image-x", "1", finish=finish)
    assert list((tmp_path / "debs").iterdir()) == []


def test_leftovers_of_a_killed_fetch_are_cleaned(tmp_path: Path, apt: FakeApt) -> None:
    stale = tmp_path / "debs" / ".tmp-dead"
    (stale / "root").mkdir(parents=True)
    fetch_unpacked(AptRoot(tmp_path, "amd64"), "p", "1")
    assert not stale.exists()


def test_superseded_versions_are_pruned_but_recent_ones_kept(tmp_path: Path) -> None:
    debs = tmp_path / "debs"
    old = debs / "linux-image-6.1.0-55-amd64_6.1.190-1_amd64"
    recent = debs / "linux-image-6.1.0-56-amd64_6.1.191-1_amd64"
    keep = debs / "linux-image-6.1.0-57-amd64_6.1.192-2_amd64"
    other = debs / "busybox-static_1%3a1.35.0-4_amd64"
    for path in (old, recent, keep, other):
        (path / "boot").mkdir(parents=True)
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    debcache.prune(tmp_path, "linux-image-*-amd64", "amd64", keep=keep)
    assert not old.exists() and recent.exists() and keep.exists() and other.exists()
    assert not list(debs.glob(".tmp-*"))
