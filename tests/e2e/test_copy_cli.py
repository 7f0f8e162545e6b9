"""Copies as a user types them (docs/clones.md): linked and full clones of containers and VMs
diverge independently (checked inside each guest), each clone has its own identity, a source with
clones is deleted only with --force, flatten, publish then launch, and bad input gets a clear
error with the store and the state root's files left exactly as they were."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.netlab import Lab, lab  # noqa: F401  (the fixture)
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import state_of, tiny  # noqa: F401  (the fixture)

WRITE = "set -e; echo {text} > /root/mine; dd if=/dev/urandom of=/root/blob bs=64k count=4 2>/dev/null; sync"
SUMS = "sha256sum /root/shared /root/mine /root/blob; hostname"


def ok(virtkit: Cli, *args: str, timeout: float = 180) -> str:
    done = virtkit(*args, timeout=timeout)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def inside(virtkit: Cli, name: str, script: str) -> str:
    return ok(virtkit, "exec", name, "--", "sh", "-c", script, timeout=60)


def sums(virtkit: Cli, name: str) -> dict[str, str]:
    lines = inside(virtkit, name, SUMS).splitlines()
    found = {line.split()[1]: line.split()[0] for line in lines[:-1]}
    found["hostname"] = lines[-1]
    return found


def _diverge(virtkit: Cli, kind: str) -> None:
    """A source, a linked clone and a full copy of it: each writes its own data; each keeps its own."""
    ok(virtkit, "launch", "tiny", "src", f"--{kind}", "--wait")
    inside(virtkit, "src", "set -e; dd if=/dev/urandom of=/root/shared bs=64k count=8 2>/dev/null; sync")
    shared = inside(virtkit, "src", "sha256sum /root/shared").split()[0]
    ok(virtkit, "stop", "src")
    assert "linked clone of src" in ok(virtkit, "copy", "src", "linked")
    assert "full copy of src" in ok(virtkit, "copy", "src", "full", "--full")
    seen = {}
    for name in ("src", "linked", "full"):
        ok(virtkit, "start", name, "--wait")
        inside(virtkit, name, WRITE.format(text=name))
        seen[name] = sums(virtkit, name)
    for name in ("src", "linked", "full"):
        ok(virtkit, "restart", name, "--wait")  # what each wrote went to its own disk, not a shared one
        again = sums(virtkit, name)
        assert again == seen[name] and again["/root/shared"] == shared and again["hostname"] == name
        assert inside(virtkit, name, "cat /root/mine").strip() == name
    assert len({seen[name]["/root/blob"] for name in seen}) == 3
    layers = state_of(virtkit, "linked")["layers"]
    assert isinstance(layers, list) and len(layers) == 1 and state_of(virtkit, "src")["layers"] == layers
    assert state_of(virtkit, "full")["layers"] == []


def test_container_clones_diverge(tiny: Cli) -> None:  # noqa: F811
    _diverge(tiny, "container")


def test_vm_clones_diverge(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    _diverge(tiny, "vm")
    (layer,) = state_of(tiny, "src")["layers"]  # type: ignore[misc]
    frozen = state_root / "layers" / f"{layer}.qcow2"
    assert stat.S_IMODE(frozen.stat().st_mode) == 0o444 and frozen.stat().st_uid == 0


@pytest.mark.parametrize("kind", ["container", "vm"])
def test_linked_copy_of_a_source_with_snapshots(tiny: Cli, state_root: Path, kind: str) -> None:  # noqa: F811
    """The source keeps its snapshots and can go back to one; the clone has what its top held."""
    ok(tiny, "launch", "tiny", "src", f"--{kind}", "--wait")
    inside(tiny, "src", "echo one > /root/mine; sync")
    ok(tiny, "stop", "src")
    ok(tiny, "snapshot", "create", "src", "s0")
    ok(tiny, "start", "src", "--wait")
    inside(tiny, "src", "echo two > /root/mine; sync")
    ok(tiny, "stop", "src")
    said = ok(tiny, "copy", "src", "twin")
    assert "linked clone of src" in said and "src has snapshots (s0)" in said, said
    assert state_of(tiny, "src")["layers"] == []
    ok(tiny, "snapshot", "restore", "src", "s0")
    ok(tiny, "start", "src", "--wait")
    ok(tiny, "start", "twin", "--wait")
    assert inside(tiny, "src", "cat /root/mine").strip() == "one"
    assert inside(tiny, "twin", "cat /root/mine; hostname").split() == ["two", "twin"]
    assert "s0" in ok(tiny, "snapshot", "list", "src") and "s0" not in ok(tiny, "snapshot", "list", "twin")
    if kind == "container":  # one on a tree of its own (a full copy of a clone) with snapshots: refused
        ok(tiny, "stop", "twin")
        ok(tiny, "copy", "twin", "own", "--full")
        assert state_of(tiny, "own")["base"] == "own"
        ok(tiny, "snapshot", "create", "own", "s1")
        before = _state(state_root)
        assert_clear_error(tiny("copy", "own", "x"), 1, "rests on a tree of its own")
        assert_clear_error(tiny("copy", "own", "x", "--snapshot", "s1"), 1, "rests on a tree of its own")
        assert _state(state_root) == before
        ok(tiny, "snapshot", "delete", "own", "s1")  # then its tree is frozen into a layer (it never ran)
        ok(tiny, "copy", "own", "y")
        ok(tiny, "start", "y", "--wait")
        assert inside(tiny, "y", "cat /root/mine").strip() == "two"


@pytest.mark.parametrize("kind", ["container", "vm"])
def test_clone_identity(lab: Lab, kind: str) -> None:  # noqa: F811
    lab.ok("launch", "tiny", "src", f"--{kind}", "--network", "default", "--wait", timeout=180)
    lab.wait_address("src")
    assert lab.exec("src", "echo 0123456789abcdef0123456789abcdef > /etc/machine-id; sync").returncode == 0
    lab.ok("stop", "src")
    lab.ok("copy", "src", "twin")
    lab.ok("start", "src", "--wait", timeout=180)
    lab.ok("start", "twin", "--wait", timeout=180)
    source, twin = lab.show("src"), lab.show("twin")
    assert source["uuid"] != twin["uuid"]
    (src_nic,), (twin_nic,) = source["nics"], twin["nics"]  # type: ignore[misc]
    assert twin_nic["network"] == src_nic["network"] == "default"
    assert twin_nic["mac"] != src_nic["mac"] and twin_nic["ip"] != src_nic["ip"]
    assert lab.wait_address("twin") == twin_nic["ip"]
    for name, nic in (("src", src_nic), ("twin", twin_nic)):
        said = lab.exec(name, "hostname; cat /sys/class/net/eth0/address; cat /etc/machine-id").stdout.split()
        assert said[:2] == [name, nic["mac"]]
        assert said[2:] == (["0123456789abcdef0123456789abcdef"] if name == "src" else [])


def test_delete_refused_then_forced_and_flatten(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny, "launch", "tiny", "src", "--wait")
    inside(tiny, "src", "echo template > /root/template; sync")
    ok(tiny, "stop", "src")
    ok(tiny, "copy", "src", "one")
    ok(tiny, "copy", "src", "two")
    refused = tiny("delete", "src")
    assert_clear_error(refused, 1, "linked clones", "one, two", "--force")
    assert state_of(tiny, "src")["name"] == "src"
    ok(tiny, "delete", "--force", "src")
    (layer,) = state_of(tiny, "one")["layers"]  # type: ignore[misc]
    assert (state_root / "layers" / layer).is_dir()  # kept for its clones
    ok(tiny, "start", "one", "--wait")
    inside(tiny, "one", "echo flat > /root/flat; sync")
    ok(tiny, "stop", "one")
    assert "flattened" in ok(tiny, "copy", "--flatten", "one")
    assert state_of(tiny, "one")["layers"] == [] and (state_root / "layers" / layer).is_dir()  # two's
    ok(tiny, "delete", "two")
    assert not (state_root / "layers").exists()  # nobody uses it any more
    ok(tiny, "start", "one", "--wait")
    assert inside(tiny, "one", "cat /root/flat /root/template").split() == ["flat", "template"]


@pytest.mark.parametrize("kind", ["container", "vm"])
def test_publish_then_launch(tiny: Cli, kind: str) -> None:  # noqa: F811
    ok(tiny, "launch", "tiny", "src", f"--{kind}", "--wait")
    inside(tiny, "src", "echo published > /root/mark; echo 0123456789abcdef > /etc/machine-id; sync")
    ok(tiny, "stop", "src")
    assert "published from src" in ok(tiny, "publish", "src", "--alias", "golden")
    image = json.loads(ok(tiny, "image", "show", "golden", "--json"))
    assert image["kinds"] == [kind]
    ok(tiny, "launch", "golden", "fresh", "--wait")
    said = inside(tiny, "fresh", "cat /root/mark; hostname; cat /etc/machine-id").split()
    assert said == ["published", "fresh"]
    assert_clear_error(tiny("publish", "src", "--alias", "golden"), 1, "already image")


def _state(root: Path) -> dict[str, object]:
    """The store's instances, snapshots and images, and every entry under the state root (locks and
    the database files aside)."""
    state: dict[str, object] = {}
    with sqlite3.connect(f"file:{root / 'virtkit.db'}?mode=ro", uri=True) as conn:
        for table in ("instances", "snapshots", "images"):
            state[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    for directory, dirs, files in os.walk(root):
        if Path(directory) == root:
            dirs[:] = [d for d in dirs if d != "locks"]
            files = [f for f in files if not f.startswith("virtkit.db")]
        for name in dirs + files:
            info = Path(directory, name).lstat()
            state[os.path.join(directory, name)] = (
                stat.filemode(info.st_mode),
                info.st_size,
                info.st_mtime_ns,
            )
    return state


def test_bad_input_changes_nothing(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny, "launch", "tiny", "run1", "--wait")
    ok(tiny, "launch", "tiny", "stop1", "--wait")
    inside(tiny, "stop1", "echo data > /root/data")  # its top holds something to freeze
    ok(tiny, "stop", "stop1")
    ok(tiny, "create", "tiny", "other")
    ok(tiny, "snapshot", "create", "stop1", "snap0")
    before = _state(state_root)
    cases = [
        (("copy", "nope", "new"), 1, "nope"),
        (("copy", "stop1", "other"), 1, "'other' already exists"),
        (("copy", "stop1", "stop1"), 1, "onto itself"),
        (("copy", "stop1", "Bad_Name"), 2, "new instance name"),
        (("copy", "../x", "new"), 2, "name"),
        (("copy", "run1", "new"), 1, "running: it can be copied only stopped"),
        (("copy", "stop1", "new", "--snapshot", "gone"), 1, "gone"),
        (("copy", "stop1"), 2, "missing TARGET"),
        (("copy", "--flatten", "stop1", "new"), 2, "--flatten takes one instance"),
        (("copy", "--flatten", "other"), 1, "nothing to flatten"),
        (("publish", "run1"), 1, "running"),
        (("publish", "stop1", "--alias", "tiny"), 1, "already image"),
        (("publish", "nope"), 1, "nope"),
    ]
    for args, code, needle in cases:
        assert_clear_error(tiny(*args), code, needle)
        assert _state(state_root) == before, args
