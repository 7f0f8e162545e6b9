"""Volumes attached to instances as a user types it: a filesystem volume mounted in a stopped then a
running container, written as root and as a user, its owners on the host in the container's own
terms, kept when the container is deleted and read the same by another container with other host
ids; a block volume recorded on a stopped VM; and bad input refused with a clear error, the store,
the instances' saved runtimes and every file left exactly as they were."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import tiny  # noqa: F401  (the fixture)

Snapshot = dict[str, object]


def ok(cli: Cli, *args: str) -> str:
    done = cli(*args, timeout=120)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def inside(cli: Cli, name: str, script: str) -> str:
    return ok(cli, "exec", name, "--", "sh", "-c", script)


def volume_mounts(state_root: Path) -> list[str]:
    """Mounts on the host showing a volume's directory: there should never be any."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if str(state_root / "pools") in line or "/volumes/" in line]


def snapshot(root: Path) -> Snapshot:
    """The store's instances, pools and volumes, and every entry under `root` (locks and the database
    aside), with sizes and modification times: a saved runtime rewritten shows."""
    state: Snapshot = {}
    with sqlite3.connect(f"file:{root / 'virtkit.db'}?mode=ro", uri=True) as conn:
        for table in ("instances", "pools", "volumes"):
            state[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    for directory, dirs, files in os.walk(root):
        if Path(directory) == root:
            dirs[:] = [d for d in dirs if d not in ("locks", "cache")]
            files = [f for f in files if not f.startswith("virtkit.db")]
        for name in dirs + files:
            info = Path(directory, name).lstat()
            size = info.st_size if stat.S_ISREG(info.st_mode) else 0
            state[os.path.join(directory, name)] = (stat.filemode(info.st_mode), size, info.st_mtime_ns)
    return state


def bundle_mounts(state_root: Path, name: str) -> list[dict[str, object]]:
    runtime = json.loads((state_root / "instances" / name / "runtime.json").read_text())
    mounts: list[dict[str, object]] = runtime["config"]["bundle"]["mounts"]
    return mounts


def test_a_volume_follows_its_data_from_container_to_container(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny, "volume", "create", "default", "data", "--type", "filesystem")
    ok(tiny, "create", "tiny", "c1", "--container")
    said = ok(tiny, "volume", "attach", "default", "data", "c1", "--path", "/mnt/data")
    assert said == "Volume data of pool default attached to c1 at /mnt/data (from its next start).\n"
    (bound,) = [m for m in bundle_mounts(state_root, "c1") if m["destination"] == "/mnt/data"]
    assert bound["options"] == ["rbind", "nodev"]

    ok(tiny, "start", "c1", "--wait")
    assert volume_mounts(state_root) == []  # bound in the container only, not left on the host
    inside(
        tiny,
        "c1",
        "echo by root > /mnt/data/root.txt && mkdir /mnt/data/home && chown 1000:1000 /mnt/data/home",
    )
    inside(tiny, "c1", "nsenter -S 1000 -G 1000 sh -c 'id -u > /mnt/data/home/user.txt'")
    refused = tiny("exec", "c1", "--", "nsenter", "-S", "1000", "-G", "1000", "touch", "/mnt/data/x")
    assert refused.returncode != 0  # the volume's top is root's, inside as on disk
    assert "nodev" in inside(tiny, "c1", "grep ' /mnt/data ' /proc/self/mountinfo")

    data = state_root / "pools" / "default" / "filesystem" / "data"
    mine, theirs = (data / "root.txt").stat(), (data / "home" / "user.txt").stat()
    assert (mine.st_uid, mine.st_gid, (data / "root.txt").read_text()) == (0, 0, "by root\n")
    assert (theirs.st_uid, theirs.st_gid, (data / "home" / "user.txt").read_text()) == (1000, 1000, "1000\n")
    assert stat.S_IMODE(data.parent.stat().st_mode) == 0o700  # no other host user reaches into volumes

    shown = ok(tiny, "volume", "show", "default", "data")
    assert "Attached to: c1 at /mnt/data" in shown
    document = json.loads(ok(tiny, "volume", "show", "default", "data", "--json"))
    assert (document["attached_to"], document["attached_path"]) == ("c1", "/mnt/data")
    assert_clear_error(tiny("volume", "delete", "default", "data"), 1, "attached to c1")

    ok(tiny, "launch", "tiny", "c2", "--container", "--wait")  # while c1 holds its range: other host ids
    ids = [json.loads((state_root / "instances" / n / "idmap").read_text())["uid"] for n in ("c1", "c2")]
    assert ids[0] != ids[1]
    ok(tiny, "delete", "--force", "c1")
    listed = json.loads(ok(tiny, "volume", "list", "--json"))
    assert [(v["name"], v["attached_to"]) for v in listed] == [("data", None)]
    assert (data / "home" / "user.txt").read_text() == "1000\n"  # the data outlives the container

    # Incus's order (PATH as an argument); c2 runs: mounted at once
    said = ok(tiny, "volume", "attach", "default", "data", "c2", "/srv/data")
    assert said.endswith("attached to c2 at /srv/data (now).\n")
    seen = inside(
        tiny, "c2", "stat -c %u:%g /srv/data/root.txt /srv/data/home/user.txt; cat /srv/data/home/*"
    )
    assert seen.split() == ["0:0", "1000:1000", "1000"]
    assert volume_mounts(state_root) == []

    assert (
        ok(tiny, "volume", "detach", "default", "data", "c2")
        == "Volume data of pool default detached from c2.\n"
    )
    assert inside(tiny, "c2", "grep -c /srv/data /proc/self/mountinfo || true").strip() == "0"
    assert (data / "root.txt").read_text() == "by root\n"
    assert json.loads(ok(tiny, "show", "c2", "--json"))["volumes"] == []
    ok(tiny, "volume", "delete", "default", "data")
    assert not data.exists()


def test_bad_attachments_are_refused_and_change_nothing(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny, "volume", "create", "default", "data", "--type", "filesystem")
    ok(tiny, "volume", "create", "default", "logs", "--type", "filesystem")
    ok(tiny, "volume", "create", "default", "disk", "--size", "64MiB")
    for name, kind in (("c1", "--container"), ("c2", "--container"), ("v1", "--vm")):
        ok(tiny, "create", "tiny", name, kind)
    ok(tiny, "volume", "attach", "default", "data", "c1", "--path", "/mnt/data")
    before = snapshot(state_root)
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("attach", "nopool", "logs", "c2", "/x"), 1, "nopool"),
        (("attach", "default", "nope", "c2", "/x"), 1, "nope"),
        (("attach", "default", "logs", "ghost", "/x"), 1, "ghost"),
        (("attach", "default", "logs", "c2"), 2, "needs a path"),
        (("attach", "default", "logs", "c2", "mnt/data"), 2, "must be absolute"),
        (("attach", "default", "logs", "c2", "--path", "/proc/x"), 2, "/proc is the kernel's"),
        (("attach", "default", "logs", "c2", "--path", "/dev"), 2, "/dev is the kernel's"),
        (("attach", "default", "logs", "c2", "/mnt/../etc"), 2, "'..'"),
        (("attach", "default", "logs", "c2", "/"), 2, "root (/)"),
        (("attach", "default", "logs", "c2", "/a", "--path", "/b"), 2, "two paths given"),
        (("attach", "default", "logs", "c1", "/mnt/data/sub"), 1, "overlaps volume default/data"),
        (("attach", "default", "data", "c2", "/mnt/data"), 1, "already attached to c1"),
        (("attach", "default", "disk", "c2", "/mnt/disk"), 2, "block volume (a disk, for VMs)"),
        (("attach", "default", "logs", "v1"), 2, "a VM takes block volumes"),
        (("attach", "default", "disk", "v1", "/mnt"), 2, "takes no path"),
        (("detach", "default", "logs", "c1"), 1, "'logs' of pool 'default' is not attached to c1"),
        (("detach", "default", "data", "c2"), 1, "not attached to c2 (it is attached to c1)"),
        (("detach", "default", "data", "ghost"), 1, "ghost"),
        (("detach", "nopool", "data", "c1"), 1, "nopool"),
    ]
    for args, code, needle in cases:
        assert_clear_error(tiny("volume", *args), code, needle)
        assert snapshot(state_root) == before, args

    # A stopped VM records a block volume for its next start (the VM driver says whether it uses it).
    done = tiny("volume", "attach", "default", "disk", "v1")
    assert done.returncode == 0 and "attached to v1 as disk vol0 (from its next start)" in done.stdout
    (held,) = json.loads(ok(tiny, "show", "v1", "--json"))["volumes"]
    assert (held["device"], held["format"], held["path"]) == ("vol0", "qcow2", None)
    assert held["source"] == str(state_root / "pools" / "default" / "block" / "disk.qcow2")
    ok(tiny, "delete", "v1")  # its volumes outlive it, detached
    assert json.loads(ok(tiny, "volume", "show", "default", "disk", "--json"))["attached_to"] is None
