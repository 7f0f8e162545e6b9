"""Snapshots of pool volumes as a user types them (`virtkit volume snapshot create|list|show|restore|delete`),
with real qemu-img and cp: a block volume's bytes (written and read back with qemu-io) and a
filesystem volume's tree (checksums, owners, modes, links) put back exactly; list, delete, and
deleting the volume taking its snapshots along; bad input refused with a clear error and nothing
changed; restore refused under a running container; a running VM's volume snapshotted by its
QEMU (through a throttle node), restore refused until it stops; the same through `--remote`."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests import cliproc
from tests.apiserver import Server, servers  # noqa: F401  (the fixture)
from tests.e2e.conftest import VIRTKIT, Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import tiny  # noqa: F401  (the fixture)
from tests.e2e.test_vm_volumes import wait_disk
from tests.permissions import reachable

State = dict[str, object]


def ok(cli: Cli, *args: str) -> str:
    done = cli(*args, timeout=120)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def qemu_io(disk: Path, command: str) -> int:
    """Run one qemu-io command on the (detached) qcow2 disk; its exit code (1: a pattern mismatch)."""
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(disk)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert "Pattern verification failed" in done.stdout or done.returncode == 0, (command, done.stdout)
    return done.returncode


def tags(disk: Path) -> list[str]:
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(disk)],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return [entry["name"] for entry in json.loads(info.stdout).get("snapshots", [])]


def rows(root: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{root / 'virtkit.db'}?mode=ro", uri=True) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()


def digest(top: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under `top`: mode, owner, content checksum or link target, shared inode."""
    found: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        info = path.lstat()
        rel = str(path.relative_to(top))
        content: object = None
        if stat.S_ISREG(info.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        shared = (
            inodes.setdefault(info.st_ino, rel) if info.st_nlink > 1 and stat.S_ISREG(info.st_mode) else ""
        )
        found[rel] = (stat.filemode(info.st_mode), info.st_uid, info.st_gid, content, shared)
    return found


def state(root: Path) -> State:
    """The store's pools, volumes and volume snapshots, and every entry under the pools with its
    size and modification time."""
    found: State = {table: rows(root, table) for table in ("pools", "volumes", "volume_snapshots")}
    for directory, dirs, files in os.walk(root / "pools"):
        for name in dirs + files:
            info = Path(directory, name).lstat()
            found[os.path.join(directory, name)] = (
                stat.filemode(info.st_mode),
                info.st_size,
                info.st_mtime_ns,
            )
    return found


def test_a_block_volume_gets_its_bytes_back(virtkit: Cli, state_root: Path) -> None:
    ok(virtkit, "volume", "create", "default", "disk", "--size", "64MiB")
    disk = state_root / "pools" / "default" / "block" / "disk.qcow2"
    assert qemu_io(disk, "write -P 0xab 0 1M") == 0
    said = ok(virtkit, "volume", "snapshot", "create", "default", "disk")
    assert said.startswith("Snapshot snap0 of volume disk of pool default created (")
    assert qemu_io(disk, "write -P 0xcd 0 1M") == 0 and qemu_io(disk, "write -P 0xee 4M 1M") == 0
    later = json.loads(ok(virtkit, "volume", "snapshot", "create", "default", "disk", "later", "--json"))
    assert (later["name"], later["type"], later["live"], later["notes"]) == ("later", "block", False, [])
    shown = json.loads(ok(virtkit, "volume", "snapshot", "show", "default", "disk", "later", "--json"))
    assert shown == {key: value for key, value in later.items() if key != "notes"}
    fields = dict(line.split(":", 1) for line in ok(virtkit, "volume", "snapshot", "show", "default",
                                                    "disk", "later").splitlines())  # fmt: skip
    assert {key: value.strip() for key, value in fields.items() if key != "Taken at"} == {
        "Pool": "default", "Volume": "disk", "Name": "later", "Type": "block",
        "Size": fields["Size"].strip(), "Taken while": "not in use",
    }  # fmt: skip
    assert fields["Size"].strip().endswith("iB") and fields["Taken at"].strip()[:2] == "20"
    ok(virtkit, "volume", "resize", "default", "disk", "128MiB")

    said = ok(virtkit, "volume", "snapshot", "restore", "default", "disk", "snap0")
    assert said == (
        "Volume disk of pool default restored to snapshot snap0.\n"
        "Note: its virtual size is back to 64MiB, as when it was snapshotted.\n"
    )
    assert qemu_io(disk, "read -P 0xab 0 1M") == 0 and qemu_io(disk, "read -P 0x00 4M 1M") == 0
    shown = json.loads(ok(virtkit, "volume", "show", "default", "disk", "--json"))
    assert (shown["size"], shown["snapshots"]) == (64 << 20, 2)
    assert "Snapshots:   2" in ok(virtkit, "volume", "show", "default", "disk")

    ok(virtkit, "volume", "snapshot", "restore", "default", "disk", "later")
    assert qemu_io(disk, "read -P 0xcd 0 1M") == 0 and qemu_io(disk, "read -P 0xee 4M 1M") == 0
    assert qemu_io(disk, "read -P 0xab 0 1M") == 1  # really the other snapshot's bytes

    listed = json.loads(ok(virtkit, "volume", "snapshot", "list", "default", "disk", "--json"))
    assert [s["name"] for s in listed] == tags(disk) == ["snap0", "later"]  # qemu-img sees the same
    table = ok(virtkit, "volume", "snapshot", "list", "default", "disk").splitlines()
    assert table[0].split() == ["NAME", "TAKEN", "AT", "SIZE", "TAKEN", "WHILE"]
    assert [line.split()[0] for line in table[1:]] == ["snap0", "later"]
    assert ok(virtkit, "volume", "snapshot", "delete", "default", "disk", "snap0") == (
        "Snapshot snap0 of volume disk of pool default deleted.\n"
    )
    assert tags(disk) == ["later"]
    assert qemu_io(disk, "read -P 0xcd 0 1M") == 0  # the volume's data untouched by the delete
    ok(virtkit, "volume", "delete", "default", "disk")
    assert not disk.exists() and rows(state_root, "volume_snapshots") == []


def fill(top: Path) -> None:
    (top / "site" / "img").mkdir(parents=True)
    (top / "site" / "index.html").write_text("<h1>v1</h1>\n")
    (top / "site" / "img" / "logo.bin").write_bytes(os.urandom(300_000))
    (top / "owned").write_text("a user's\n")
    os.chown(top / "owned", 1000, 1000)
    (top / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(top / "tool", 0o4750)
    os.symlink("site/index.html", top / "home")
    os.link(top / "site" / "index.html", top / "site" / "same.html")


def test_a_filesystem_volume_gets_its_tree_back(virtkit: Cli, state_root: Path) -> None:
    ok(virtkit, "volume", "create", "default", "www", "--type", "filesystem")
    top = state_root / "pools" / "default" / "filesystem" / "www"
    fill(top)
    first = digest(top)
    ok(virtkit, "volume", "snapshot", "create", "default", "www")
    home = top.parent / ".www.snapshots"  # beside the volume, hidden, root's alone: not in the volume
    assert sorted(os.listdir(home)) == ["snap0"] and stat.S_IMODE(home.stat().st_mode) == 0o700
    assert digest(home / "snap0") == first

    (top / "site" / "index.html").write_text("<h1>v2</h1>\n")
    (top / "site" / "img" / "logo.bin").unlink()
    (top / "new.txt").write_text("new\n")
    ok(virtkit, "volume", "snapshot", "create", "default", "www", "v2")
    second = digest(top)
    (top / "owned").unlink()

    said = ok(virtkit, "volume", "snapshot", "restore", "default", "www", "snap0")
    assert said == "Volume www of pool default restored to snapshot snap0.\n"
    assert digest(top) == first
    ok(virtkit, "volume", "snapshot", "restore", "default", "www", "v2")
    assert digest(top) == second
    assert sorted(os.listdir(top.parent)) == [".www.snapshots", "www"]  # nothing staged left behind

    ok(virtkit, "volume", "snapshot", "delete", "default", "www", "v2")
    assert sorted(os.listdir(home)) == ["snap0"]
    listed = json.loads(ok(virtkit, "volume", "snapshot", "list", "default", "www", "--json"))
    assert [(s["name"], s["type"]) for s in listed] == [("snap0", "filesystem")]
    ok(virtkit, "volume", "delete", "default", "www")
    assert os.listdir(top.parent) == [] and rows(state_root, "volume_snapshots") == []


def test_bad_input_is_refused_and_changes_nothing(virtkit: Cli, state_root: Path) -> None:
    ok(virtkit, "volume", "create", "default", "disk", "--size", "64MiB")
    ok(virtkit, "volume", "create", "default", "www", "--type", "filesystem")
    ok(virtkit, "volume", "snapshot", "create", "default", "disk", "taken")
    ok(virtkit, "volume", "snapshot", "create", "default", "www", "taken")
    before = state(state_root)
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("create", "default", "disk", "Bad_Name"), 2, "invalid snapshot name 'Bad_Name'"),
        (("create", "default", "www", "../x"), 2, "invalid snapshot name '../x'"),
        (("create", "default", "disk", ""), 2, "invalid snapshot name: it is empty"),
        (("create", "default", "../disk"), 2, "invalid volume name '../disk'"),
        (("create", "Bad_Pool", "disk"), 2, "invalid pool name 'Bad_Pool'"),
        (("create", "nopool", "disk"), 1, "pool 'nopool' not found"),
        (("create", "default", "nope"), 1, "volume 'nope' in pool 'default' not found"),
        (
            ("create", "default", "disk", "taken"),
            1,
            "snapshot 'taken' of volume 'disk' of pool 'default' already",
        ),
        (("create", "default", "www", "taken"), 1, "already exists"),
        (("list", "default", "nope"), 1, "volume 'nope' in pool 'default' not found"),
        (("list", "default", "Bad"), 2, "invalid volume name 'Bad'"),
        (("show", "default", "disk", "nope"), 1, "snapshot 'nope' of volume 'disk' of pool 'default'"),
        (("show", "default", "disk", "../taken"), 2, "invalid snapshot name '../taken'"),
        (("show", "default", "nope", "taken"), 1, "volume 'nope' in pool 'default' not found"),
        (("show", "nopool", "www", "taken"), 1, "pool 'nopool' not found"),
        (
            ("restore", "default", "disk", "nope"),
            1,
            "snapshot 'nope' of volume 'disk' of pool 'default' not found",
        ),
        (("restore", "default", "www", "Bad_Name"), 2, "invalid snapshot name"),
        (("restore", "default", "www", "../taken"), 2, "invalid snapshot name"),
        (("restore", "nopool", "www", "taken"), 1, "pool 'nopool' not found"),
        (("delete", "default", "www", "nope"), 1, "snapshot 'nope' of volume 'www'"),
        (("delete", "default", "disk", ""), 2, "it is empty"),
    ]
    for args, code, needle in cases:
        assert_clear_error(virtkit("volume", "snapshot", *args), code, needle)
        assert state(state_root) == before, args


def test_a_running_containers_volume(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny, "volume", "create", "default", "data", "--type", "filesystem")
    ok(tiny, "create", "tiny", "c1", "--container")
    ok(tiny, "volume", "attach", "default", "data", "c1", "/mnt/data")
    ok(tiny, "start", "c1", "--wait")
    ok(tiny, "exec", "c1", "--", "sh", "-c", "echo first > /mnt/data/f")
    said = ok(tiny, "volume", "snapshot", "create", "default", "data")
    assert "Note: taken while c1 ran (frozen while it was copied): consistent as after a power cut." in said
    assert json.loads(ok(tiny, "show", "c1", "--json"))["state"] == "running"  # thawed again
    ok(tiny, "exec", "c1", "--", "sh", "-c", "echo second > /mnt/data/f")
    before = state(state_root)
    refused = tiny("volume", "snapshot", "restore", "default", "data", "snap0")
    assert_clear_error(refused, 1, "attached to c1, which is running", "stop it first: virtkit stop c1")
    assert state(state_root) == before
    assert ok(tiny, "exec", "c1", "--", "cat", "/mnt/data/f") == "second\n"

    ok(tiny, "stop", "c1", "--force")
    ok(tiny, "volume", "snapshot", "restore", "default", "data", "snap0")
    ok(tiny, "start", "c1", "--wait")
    assert ok(tiny, "exec", "c1", "--", "cat", "/mnt/data/f") == "first\n"  # what it sees: the snapshot's

    # a block volume attached to a stopped VM is snapshotted and restored as a free one
    ok(tiny, "volume", "create", "default", "disk", "--size", "64MiB", "--limit-iops", "5000")  # throttled
    ok(tiny, "create", "tiny", "v1", "--vm")
    ok(tiny, "volume", "attach", "default", "disk", "v1")
    ok(tiny, "volume", "snapshot", "create", "default", "disk")
    ok(tiny, "volume", "snapshot", "restore", "default", "disk", "snap0")
    disk = state_root / "pools" / "default" / "block" / "disk.qcow2"
    assert tags(disk) == ["snap0"]

    # one of a running VM: its QEMU takes the snapshot (the guest's write flushed into it first)
    ok(tiny, "start", "v1", "--wait")
    seen = wait_disk(tiny, "v1", "disk", present=True)
    assert seen is not None
    def write(text: str) -> None:
        ok(tiny, "exec", "v1", "--", "sh", "-c", f"echo {text} | dd of=/dev/{seen} conv=fsync 2>/dev/null")

    write("before-snap")
    said = ok(tiny, "volume", "snapshot", "create", "default", "disk", "live")
    assert "taken by the QEMU of v1 while it ran" in said, said
    assert tags(disk) == ["snap0", "live"]
    write("after-snap!")
    before = state(state_root)
    refused = tiny("volume", "snapshot", "restore", "default", "disk", "live")
    assert_clear_error(refused, 1, "attached to v1, which is running", "stop it first: virtkit stop v1")
    assert state(state_root) == before
    ok(tiny, "volume", "snapshot", "delete", "default", "disk", "snap0")  # by its QEMU too
    assert tags(disk) == ["live"]
    ok(tiny, "stop", "v1", "--force")
    ok(tiny, "volume", "snapshot", "restore", "default", "disk", "live")
    assert qemu_io(disk, "read -P 0x62 0 1") == 0  # 'b' of "before-snap", the guest's write


def test_through_a_remote(
    tmp_path: Path,
    servers: Callable[..., Server],  # noqa: F811
) -> None:
    server_root = reachable(tmp_path / "serve")
    server = servers(server_root)
    env = {
        **os.environ,
        "VIRTKIT_ROOT": str(tmp_path / "client-root"),
        "VIRTKIT_CONFIG_DIR": str(tmp_path / "cfg"),
    }

    def far(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return cliproc.run([str(VIRTKIT), "--remote", "far", *args], timeout=timeout, env=env)

    added = cliproc.run([str(VIRTKIT), "remote", "add", "far", server.url], timeout=60, env=env)
    assert added.returncode == 0, added.stderr
    ok(far, "volume", "create", "default", "www", "--type", "filesystem")
    top = server_root / "pools" / "default" / "filesystem" / "www"
    (top / "page").write_text("one\n")
    assert ok(far, "volume", "snapshot", "create", "default", "www") == (
        "Snapshot snap0 of volume www of pool default created (8KiB).\n"
    )
    (top / "page").write_text("two\n")
    assert [
        s["name"] for s in json.loads(ok(far, "volume", "snapshot", "list", "default", "www", "--json"))
    ] == ["snap0"]
    shown = json.loads(ok(far, "volume", "snapshot", "show", "default", "www", "snap0", "--json"))
    assert (shown["name"], shown["volume"], shown["type"]) == ("snap0", "www", "filesystem")
    assert_clear_error(far("volume", "snapshot", "show", "default", "www", "nope"), 1, "'nope' of volume")
    assert_clear_error(
        far("volume", "snapshot", "create", "default", "www", "Bad_Name"), 2, "invalid snapshot"
    )
    assert_clear_error(
        far("volume", "snapshot", "restore", "default", "www", "nope"), 1, "'nope' of volume 'www'"
    )
    assert_clear_error(far("volume", "snapshot", "create", "default", "www", "snap0"), 1, "already exists")
    ok(far, "volume", "snapshot", "restore", "default", "www", "snap0")
    assert (top / "page").read_text() == "one\n"
    assert "Snapshots:   1" in ok(far, "volume", "show", "default", "www")
    ok(far, "volume", "snapshot", "delete", "default", "www", "snap0")
    assert json.loads(ok(far, "volume", "snapshot", "list", "default", "www", "--json")) == []
    assert not (top.parent / ".www.snapshots").exists()
