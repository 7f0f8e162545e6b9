"""Backups as a user types them: a running container and a running VM, with data of every kind and a
snapshot, exported, deleted, and imported on a *different* state root that never had their image:
they run there with the same data (checked inside the guest) and their snapshots restore; an
incremental VM export on top of a full one reproduces the disk; NICs follow networks by name;
broken archives get a clear error."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_snapshot_cli import CHANGE, SETUP, manifest, ok, run_in
from tests.e2e.test_vm_lifecycle import state_of, tiny  # noqa: F401  (the fixture)
from tests.permissions import reachable

CHECKSUM = "sha256sum /root/data /srv/app/conf; cat /etc/mdev.conf | tail -1"


@pytest.fixture
def other(virtkit: Cli, tmp_path: Path) -> Iterator[Cli]:
    """The CLI on a second, empty state root (another host, as far as virtkit knows)."""
    root = reachable(tmp_path / "other")

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return virtkit(*args, timeout=timeout, env={"VIRTKIT_ROOT": str(root)})

    yield run
    listed = run("list", "--json")
    for instance in json.loads(listed.stdout or "[]"):
        run("delete", "--force", instance["name"], timeout=60)


def _round_trip(tiny: Cli, other: Cli, tmp_path: Path, kind: str, name: str) -> None:  # noqa: F811
    wait = 180 if kind == "vm" else 120
    ok(tiny("launch", "tiny", name, f"--{kind}", "--wait", timeout=wait))
    run_in(tiny, name, SETUP)
    at_snapshot = manifest(tiny, name)
    ok(tiny("snapshot", "create", name, "before"))
    run_in(tiny, name, CHANGE)
    now = manifest(tiny, name)
    old_uuid = state_of(tiny, name)["uuid"]
    archive = tmp_path / f"{name}.tar.zst"
    exported = ok(tiny("export", name, str(archive), timeout=300))  # while it runs
    assert f"Exported {name} to {archive}" in exported and "1 snapshot" in exported
    if kind == "vm":  # the tiny image's agent cannot freeze filesystems, and the export says so
        assert "captured unfrozen" in exported and "no qemu-guest-agent" in exported, exported
    assert state_of(tiny, name)["state"] == "running"  # it was not stopped for it
    assert ok(tiny("snapshot", "list", name, "--json")).count('"name"') == 1  # no temporary one left
    ok(tiny("delete", "--force", name, timeout=60))

    imported = ok(other("import", str(archive), timeout=300))
    assert f"Imported {kind} {name} from {archive.name} (image " in imported
    images = json.loads(ok(other("image", "list", "--json")))
    assert [image["aliases"] for image in images] == [["tiny"]]  # the image came with it
    shown = json.loads(ok(other("show", name, "--json")))
    assert shown["uuid"] != old_uuid and shown["state"] == "stopped"
    ok(other("start", name, "--wait", timeout=wait))
    assert manifest(other, name) == now
    restored = ok(other("snapshot", "restore", name, "before", "--wait", timeout=wait))
    assert "restored to snapshot before" in restored
    assert manifest(other, name) == at_snapshot


def test_container_round_trip_to_another_root(tiny: Cli, other: Cli, tmp_path: Path) -> None:  # noqa: F811
    _round_trip(tiny, other, tmp_path, "container", "c1")


def test_vm_round_trip_to_another_root(tiny: Cli, other: Cli, tmp_path: Path) -> None:  # noqa: F811
    _round_trip(tiny, other, tmp_path, "vm", "v1")


def test_vm_incremental_on_top_of_a_full_import(tiny: Cli, other: Cli, tmp_path: Path) -> None:  # noqa: F811
    ok(tiny("launch", "tiny", "v2", "--vm", "--wait", timeout=180))
    run_in(tiny, "v2", SETUP)
    ok(tiny("stop", "v2", timeout=90))
    ok(tiny("snapshot", "create", "v2", "base"))
    full = tmp_path / "full.tar.gz"
    ok(tiny("export", "v2", str(full), "--compress", "gzip", timeout=300))
    ok(other("import", str(full), timeout=300))
    ok(tiny("start", "v2", "--wait", timeout=180))
    run_in(tiny, "v2", CHANGE)
    wanted, everything = run_in(tiny, "v2", CHECKSUM), manifest(tiny, "v2")
    ok(tiny("stop", "v2", timeout=90))
    changes = tmp_path / "changes.tar"
    said = ok(tiny("export", "v2", str(changes), "--since", "base", "--compress", "none", timeout=300))
    assert "the changes since base" in said
    assert changes.stat().st_size < full.stat().st_size / 2  # no image, only what changed
    assert ok(other("import", str(changes), timeout=300)).startswith("Imported vm v2")
    ok(other("start", "v2", "--wait", timeout=180))
    assert run_in(other, "v2", CHECKSUM) == wanted
    assert manifest(other, "v2") == everything
    # the same archive again is refused now: the instance runs
    assert_clear_error(other("import", str(changes)), 1, "must be stopped")
    # an incremental needs the instance it belongs to
    ok(other("stop", "v2", timeout=90))
    ok(other("delete", "v2"))
    assert_clear_error(other("import", str(changes)), 1, "instance 'v2' not found")


def files(virtkit: Cli, name: str) -> str:
    """The guest's manifest without directories' link counts: overlayfs counts a directory merged
    from two layers as 1, one in a single tree as 2 + its subdirectories (the same files)."""
    return re.sub(r"( directory) \d+$", r"\1", manifest(virtkit, name), flags=re.MULTILINE)


def test_container_clones_round_trip_to_another_root(tiny: Cli, other: Cli, tmp_path: Path) -> None:  # noqa: F811
    """A linked clone (on a layer frozen from its source, which wrote and deleted image files) and
    a full copy (a tree of its own) come back as containers on a tree of their own, with their
    data, their own changes and a snapshot; an incremental export follows onto the imported one."""
    ok(tiny("launch", "tiny", "tmpl", "--container", "--wait", timeout=120))
    run_in(tiny, "tmpl", SETUP)  # in the layer the clone will rest on: data, links, a deleted file
    ok(tiny("stop", "tmpl", timeout=60))
    ok(tiny("copy", "tmpl", "clone"))
    ok(tiny("copy", "tmpl", "whole", "--full"))
    ok(tiny("start", "clone", "--wait", timeout=120))
    at_snapshot = files(tiny, "clone")
    ok(tiny("snapshot", "create", "clone", "s0"))
    run_in(tiny, "clone", CHANGE)
    now = files(tiny, "clone")
    archive, whole = tmp_path / "clone.tar.zst", tmp_path / "whole.tar"
    said = ok(tiny("export", "clone", str(archive), timeout=300))  # running, on a layer
    assert "that whole tree is carried" in said, said
    ok(tiny("export", "whole", str(whole), "--compress", "none", timeout=300))
    ok(tiny("delete", "--force", "clone", timeout=60))

    ok(other("import", str(archive), timeout=300))
    shown = json.loads(ok(other("show", "clone", "--json")))
    assert shown["layers"] == [] and shown["base"] == "own"
    ok(other("start", "clone", "--wait", timeout=120))
    assert files(other, "clone") == now
    ok(other("snapshot", "restore", "clone", "s0", "--wait", timeout=120))
    assert files(other, "clone") == at_snapshot
    ok(other("import", str(whole), timeout=300))
    ok(other("start", "whole", "--wait", timeout=120))
    ok(tiny("start", "tmpl", "--wait", timeout=120))
    assert files(other, "whole") == files(tiny, "tmpl")
    # what the imported clone changes since s0 goes onto the other root's copy by an incremental
    run_in(other, "clone", "echo later > /root/later; sync")
    later = files(other, "clone")
    ok(other("stop", "clone", timeout=60))
    changes = tmp_path / "changes.tar"
    ok(other("export", "clone", str(changes), "--since", "s0", "--compress", "none", timeout=300))
    assert changes.stat().st_size < whole.stat().st_size / 4
    ok(other("import", str(archive), "back", timeout=300))
    assert ok(other("import", str(changes), "back", timeout=300)).startswith("Imported container back")
    ok(other("start", "back", "--wait", timeout=120))
    assert files(other, "back") == later


def test_nics_follow_networks_by_name(tiny: Cli, other: Cli, tmp_path: Path) -> None:  # noqa: F811
    ok(tiny("network", "create", "bklan", timeout=60))
    ok(tiny("create", "tiny", "n1", "--container", "--network", "bklan"))
    before = json.loads(ok(tiny("show", "n1", "--json")))
    archive = tmp_path / "n1.tar"
    ok(tiny("export", "n1", str(archive), "--instance-only"))
    kept = ok(tiny("import", str(archive), "n2"))
    again = json.loads(ok(tiny("show", "n2", "--json")))
    assert [n["network"] for n in again["nics"]] == ["bklan"] and "dropped" not in kept
    assert again["nics"][0]["mac"] != before["nics"][0]["mac"]
    assert again["nics"][0]["ip"] != before["nics"][0]["ip"]
    dropped = ok(other("import", str(archive)))
    assert "its NIC on network 'bklan' was dropped" in dropped
    assert json.loads(ok(other("show", "n1", "--json")))["nics"] == []
    for name in ("n1", "n2"):
        ok(tiny("delete", name))
    ok(tiny("network", "delete", "bklan", timeout=60))


def test_broken_archives_and_bad_input_get_clear_errors(tiny: Cli, other: Cli, tmp_path: Path) -> None:  # noqa: F811
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    assert_clear_error(other("import", str(junk)), 1, "is not a virtkit backup")
    assert_clear_error(other("import", str(tmp_path / "missing.tar")), 1, "does not exist")
    ok(tiny("create", "tiny", "c3", "--container"))
    archive = tmp_path / "c3.tar.zst"
    ok(tiny("export", "c3", str(archive)))
    assert_clear_error(tiny("export", "c3", str(archive)), 1, "already exists")
    assert_clear_error(tiny("import", str(archive)), 1, "instance 'c3' already exists", "NEW-NAME")
    assert_clear_error(tiny("import", str(archive), "Bad_Name"), 2, "invalid instance name")
    assert_clear_error(tiny("export", "c3", str(tmp_path / "x.tar"), "--since", "nope"), 1,
                       "snapshot 'nope' of instance 'c3' not found")  # fmt: skip
    assert not (tmp_path / "x.tar").exists()
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert_clear_error(other("import", str(cut)), 1, "truncated or corrupt")
    assert json.loads(ok(other("list", "--json"))) == []
    assert json.loads(ok(other("image", "list", "--json"))) == []
