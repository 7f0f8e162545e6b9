"""Storage pools and volumes as a user types them: made, shown, resized, limited, deleted — and bad
input (names, hostile paths, sizes, duplicates, pools in use, shrinks, truncated options) refused
with a clear error, the store and every directory involved left exactly as they were."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli

Snapshot = dict[str, object]


def snapshot(root: Path, *trees: Path) -> Snapshot:
    """The store's pools and volumes, and every entry under `root` and `trees` (locks aside: taking
    a lock writes its holder into the lock file)."""
    state: Snapshot = {}
    uri = f"file:{root / 'virtkit.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        for table in ("pools", "volumes"):
            state[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    for top in (root, *trees):
        for directory, dirs, files in os.walk(top):
            if Path(directory) == root:
                dirs[:] = [d for d in dirs if d != "locks"]
                files = [f for f in files if not f.startswith("virtkit.db")]
            for name in dirs + files:
                path = Path(directory, name)
                info = path.lstat()
                target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
                size = info.st_size if stat.S_ISREG(info.st_mode) else 0
                state[str(path)] = (stat.filemode(info.st_mode), size, info.st_mtime_ns, target)
    return state


def ok(virtkit: Cli, *args: str) -> str:
    done = virtkit(*args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def test_pools_and_volumes(virtkit: Cli, state_root: Path, tmp_path: Path) -> None:
    listed = json.loads(ok(virtkit, "storage", "pool", "list", "--json"))  # the default pool, from the start
    assert [(p["name"], p["path"], p["state"]) for p in listed] == [
        ("default", str(state_root / "pools" / "default"), "ok")
    ]
    area = tmp_path / "srv"
    area.mkdir()
    assert ok(virtkit, "storage", "pool", "create", "fast", "--path", str(area / "fast")) == (
        f"Pool fast created: dir at {area / 'fast'}.\n"
    )
    made = ok(virtkit, "volume", "create", "fast", "disk1", "--size", "2GiB", "--limit-read-iops", "500")
    assert made == "Volume disk1 created in pool fast: block, 2GiB qcow2 disk.\n"
    ok(virtkit, "volume", "create", "fast", "files", "--type", "filesystem", "--size", "5GB")
    disk = area / "fast" / "block" / "disk1.qcow2"
    assert disk.is_file() and (area / "fast" / "filesystem" / "files").is_dir()

    shown = ok(virtkit, "storage", "pool", "show", "fast")
    assert "Path:" in shown and str(area / "fast") in shown and "Free:" in shown
    assert "Volume disk1: block, 2GiB" in shown and "6.7GiB in 2 volume(s)" in shown
    volume = json.loads(ok(virtkit, "volume", "show", "fast", "disk1", "--json"))
    assert volume["path"] == str(disk) and 0 < volume["usage"] < 1 << 20 and volume["format"] == "qcow2"
    assert volume["limits"] == {"limits.read_iops": "500"}
    text = ok(virtkit, "volume", "show", "fast", "disk1")
    assert "Usage:" in text and "limits.read_iops: 500iops" in text

    assert (
        ok(virtkit, "volume", "resize", "fast", "disk1", "3GiB")
        == "Volume disk1 resized from 2GiB to 3GiB.\n"
    )
    assert "resized from 3GiB to 1GiB" in ok(virtkit, "volume", "resize", "fast", "disk1", "1GiB", "--force")
    assert "limits.write_bps=50MiB/s" in ok(
        virtkit, "volume", "set", "fast", "disk1", "limits.write_bps=50MiB"
    )
    ok(virtkit, "volume", "unset", "fast", "disk1", "limits.read_iops")
    rows = json.loads(ok(virtkit, "storage", "volume", "list", "fast", "--json"))  # the Incus spelling
    assert [(r["name"], r["type"], r["size"], r["config"]) for r in rows] == [
        ("disk1", "block", 1 << 30, {"limits.write_bps": str(50 << 20)}),
        ("files", "filesystem", 5 * 10**9, {}),
    ]
    table = ok(virtkit, "volume", "list")
    assert "fast  disk1  block" in table and "write_bps=50MiB/s" in table

    for name in ("disk1", "files"):
        assert ok(virtkit, "volume", "delete", "fast", name) == f"Volume {name} deleted from pool fast.\n"
    assert ok(virtkit, "storage", "pool", "delete", "fast") == "Pool fast deleted.\n"
    assert os.listdir(area) == []  # the directory it made is gone
    assert "No volumes." in ok(virtkit, "volume", "list")


def refused(virtkit: Cli, state: list[Path], args: list[str], code: int, *words: str) -> None:
    root, *trees = state
    before = snapshot(root, *trees)
    done = virtkit(*args)
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert done.stdout == "", done.stdout
    for word in words:
        assert word in done.stderr, (args, word, done.stderr)
    if "Usage:" in done.stderr:  # click's: usage, then the error
        assert "Error: " in done.stderr, done.stderr
    else:  # ours: what was wrong, and what to do
        assert done.stderr.startswith("Error: ") and len(done.stderr.strip().splitlines()) <= 2, done.stderr
    assert snapshot(root, *trees) == before, f"virtkit {' '.join(args)} changed the store or a directory"


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """Things a pool must not be put on, each beside an untouched victim."""
    area = tmp_path / "area"
    area.mkdir()
    (area / "victim").mkdir()
    (area / "victim" / "precious").write_text("keep me")
    (area / "to-victim").symlink_to(area / "victim")
    (area / "to-etc").symlink_to("/etc")
    (area / "a-file").write_text("not a directory")
    (area / "empty").mkdir()
    return area


def test_bad_pools_are_refused_and_change_nothing(virtkit: Cli, state_root: Path, hostile: Path) -> None:
    ok(virtkit, "storage", "pool", "create", "fast", "--path", str(hostile / "fast"))
    ok(virtkit, "volume", "create", "fast", "disk1", "--size", "1GiB")
    state = [state_root, hostile]
    for args, code, words in [
        (["create", "Bad_Name"], 2, ["invalid pool name"]),
        (["create", "-bad"], 2, ["No such option"]),
        (["create", "a" * 64], 2, ["longer than 63"]),
        (["create", "p", "--path", "relative/dir"], 2, ["must be absolute"]),
        (["create", "p", "--path", f"{hostile}/empty/../victim"], 2, ["'..'"]),
        (["create", "p", "--path", str(hostile / "to-etc")], 2, ["symlink", "-> /etc"]),
        (["create", "p", "--path", f"{hostile}/to-etc/virtkit"], 2, ["symlink"]),
        (["create", "p", "--path", f"{hostile}/to-victim/sub"], 2, ["symlink"]),
        (["create", "p", "--path", f"{hostile}/fast/block"], 2, ["inside pool 'fast'"]),
        (["create", "p", "--path", str(hostile)], 2, ["would hold pool 'fast'"]),
        (["create", "p", "--path", str(hostile / "a-file")], 2, ["not a directory"]),
        (["create", "p", "--path", f"{hostile}/a-file/sub"], 2, ["is not a directory"]),
        (["create", "p", "--path", str(hostile / "victim")], 2, ["not empty", "precious"]),
        (["create", "p", "--path", f"{hostile}/missing/sub"], 2, ["does not exist"]),
        (["create", "p", "--path", "/etc"], 2, ["not empty"]),
        (["create", "p", "--path", "/proc/virtkit"], 2, ["pseudo-filesystem"]),
        (["create", "p", "--path", "/"], 2, ["whole filesystem"]),
        (["create", "p", "--path", str(state_root)], 2, ["would hold the state root"]),
        (["create", "p", "--path", str(state_root / "instances")], 2, ["own directories"]),
        (
            ["create", "p", "--path", str(state_root / "pools" / "default" / "x")],
            2,
            ["inside pool 'default'"],
        ),
        (["create", "fast", "--path", str(hostile / "empty")], 1, ["pool 'fast' already exists"]),
        (["create", "default"], 1, ["already exists"]),
        (["create", "p", "--driver", "lvm", "--path", str(hostile / "empty")], 2, ["unknown pool driver"]),
        (["delete", "fast"], 1, ["holds 1 volume(s): disk1", "virtkit volume delete fast disk1"]),
        (["delete", "default"], 1, ["cannot be deleted"]),
        (["delete", "nope"], 1, ["pool 'nope' not found"]),
        (["show", "nope"], 1, ["not found"]),
        (["create"], 2, ["Missing argument"]),
        (["create", "p", "--path"], 2, ["requires an argument"]),
        (["create", "p", "--paht", "/srv"], 2, ["No such option"]),
    ]:
        refused(virtkit, state, ["storage", "pool", *args], code, *words)
    assert not os.path.lexists("/etc/.virtkit-pool") and not os.path.lexists("/etc/virtkit")
    assert (hostile / "victim" / "precious").read_text() == "keep me"


def _set_attached(root: Path, instance: str | None) -> None:
    with sqlite3.connect(root / "virtkit.db") as conn:
        (data,) = conn.execute(
            "SELECT data FROM volumes WHERE pool = 'default' AND name = 'disk1'"
        ).fetchone()
        record = json.loads(data)
        record["attached_to"] = instance
        conn.execute(
            "UPDATE volumes SET data = ? WHERE pool = 'default' AND name = 'disk1'", [json.dumps(record)]
        )


def test_bad_volumes_are_refused_and_change_nothing(virtkit: Cli, state_root: Path) -> None:
    ok(virtkit, "volume", "create", "default", "disk1", "--size", "1GiB")
    ok(virtkit, "volume", "create", "default", "files", "--type", "filesystem")
    state = [state_root]
    for args, code, words in [
        (["create", "default", "Disk"], 2, ["invalid volume name", "try 'disk'"]),
        (["create", "default", "a.b"], 2, ["invalid volume name"]),
        (["create", "nope", "v"], 1, ["pool 'nope' not found"]),
        (["create", "default", "disk1"], 1, ["volume 'disk1' already exists in pool 'default'"]),
        (["create", "default", "files", "--type", "filesystem"], 1, ["already exists"]),
        (["create", "default", "v", "--size", "0"], 2, ["at least 1MiB"]),
        (["create", "default", "v", "--size=-1G"], 2, ["cannot be negative"]),
        (["create", "default", "v", "--size", "65TiB"], 2, ["at most 64TiB"]),
        (["create", "default", "v", "--size", "99999999999999999999999"], 2, ["at most 64TiB"]),
        (["create", "default", "v", "--size", "ten"], 2, ["invalid volume size"]),
        (["create", "default", "v", "--size", "1.5.5G"], 2, ["invalid volume size"]),
        (["create", "default", "v", "--size", ""], 2, ["invalid volume size"]),
        (["create", "default", "v", "--size", "0.5B"], 2, ["whole number of bytes"]),
        (["create", "default", "v", "--limit-read-iops", "fast"], 2, ["operations per second"]),
        (["create", "default", "v", "--limit-read-iops", "0"], 2, ["at least 1"]),
        (
            ["create", "default", "v", "--limit-bps", "1G", "--limit-read-bps", "1M"],
            2,
            ["cannot be combined"],
        ),
        (["create", "default", "v", "--type", "filesystem", "--limit-iops", "5"], 2, ["block volumes only"]),
        (["resize", "default", "disk1", "512MiB"], 2, ["cuts off", "--force"]),
        (["resize", "default", "files", "1MiB", "--force"], 2, ["cannot shrink"]),
        (["resize", "default", "disk1", "huge"], 2, ["invalid volume size"]),
        (["resize", "default", "disk1", "65TiB"], 2, ["at most 64TiB"]),
        (["resize", "default", "nope", "2GiB"], 1, ["volume 'nope' in pool 'default' not found"]),
        (["set", "default", "disk1", "limits.read=5"], 2, ["unknown volume setting"]),
        (["set", "default", "disk1", "limits.read_iops"], 2, ["KEY=VALUE"]),
        (["set", "default", "disk1", "limits.read_bps=-5"], 2, ["negative"]),
        (["set", "default", "disk1"], 2, ["nothing to set"]),
        (["set", "default", "files", "limits.iops=5"], 2, ["block volumes only"]),
        (["unset", "default", "disk1", "size"], 2, ["unknown volume setting"]),
        (["delete", "default", "nope"], 1, ["not found"]),
        (["show", "default", "nope"], 1, ["not found"]),
        (["list", "nope"], 1, ["pool 'nope' not found"]),
        (["create", "default"], 2, ["Missing argument"]),
        (["create", "default", "v", "--size"], 2, ["requires an argument"]),
        (["create", "default", "v", "--type", "raw"], 2, ["'raw' is not one of"]),
        (["create", "default", "v", "--sise", "1G"], 2, ["No such option"]),
        (["resize", "default", "disk1"], 2, ["Missing argument"]),
    ]:
        refused(virtkit, state, ["volume", *args], code, *words)

    _set_attached(state_root, "web1")  # as attaching (next) will record it
    for args in (["delete", "default", "disk1"], ["resize", "default", "disk1", "2GiB"]):
        refused(virtkit, state, ["volume", *args], 1, "attached to web1", "detach it from web1 first")
    _set_attached(state_root, None)
    ok(virtkit, "volume", "delete", "default", "disk1")


def test_concurrent_commands_take_turns(virtkit: Cli, state_root: Path) -> None:
    """Fresh root, several virtkit processes at once: one default pool, each name made exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    names = ["a", "b", "c", "a", "b", "c"]
    with ThreadPoolExecutor(len(names)) as pool:
        done = list(pool.map(lambda n: virtkit("volume", "create", "default", n, "--size", "1GiB"), names))
    assert sorted(d.returncode for d in done) == [0, 0, 0, 1, 1, 1], [d.stderr for d in done]
    assert all("already exists" in d.stderr for d in done if d.returncode)
    pools = json.loads(ok(virtkit, "storage", "pool", "list", "--json"))
    assert [p["name"] for p in pools] == ["default"] and pools[0]["volumes"] == ["a", "b", "c"]
    assert sorted(os.listdir(state_root / "pools" / "default" / "block")) == ["a.qcow2", "b.qcow2", "c.qcow2"]
