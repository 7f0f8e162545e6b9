"""Snapshots as a user types them: data written inside a container and a VM survives snapshot ->
change -> restore exactly (checked inside the guest), running and stopped; bad input gets a clear
error and changes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import state_of, tiny  # noqa: F401  (the fixture)

# Every kind of change a root filesystem sees: new files (random data), a hard link, a symlink, a
# FIFO, owners (in a container: mapped into its id range), setuid, a changed and a deleted image
# file (a copy-up and a whiteout in a container's writable layer).
SETUP = """set -e
mkdir -p /srv/app/sub
dd if=/dev/urandom of=/root/data bs=64k count=8 2>/dev/null
echo config > /srv/app/conf
ln /srv/app/conf /srv/app/conf-link
ln -s ../../root/data /srv/app/sym
chown 1000:1000 /srv/app/sub /srv/app/conf
chmod 4750 /srv/app/conf
mkfifo /srv/app/fifo
echo tuned >> /etc/mdev.conf
rm /etc/os-release
sync
"""
CHANGE = """set -e
dd if=/dev/urandom of=/root/data bs=64k count=2 conv=notrunc 2>/dev/null
rm /srv/app/conf-link
rm -rf /srv/app/sub
echo new > /root/new
echo back > /etc/os-release
sed -i s/tuned/retuned/ /etc/mdev.conf
sync
"""
# What the guest itself says of those files: names, owners, modes, types, links, sha256, targets.
MANIFEST = """for f in $(find /root /srv | sort) /etc/mdev.conf /etc/os-release; do
  if [ -e "$f" ] || [ -L "$f" ]; then
    stat -c '%n %u:%g %a %F %h' "$f"
    if [ -f "$f" ] && [ ! -L "$f" ]; then sha256sum "$f"; fi
    if [ -L "$f" ]; then readlink "$f"; fi
  else echo "$f absent"; fi
done
"""


def run_in(virtkit: Cli, name: str, script: str) -> str:
    done = virtkit("exec", name, "--", "sh", "-c", script, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def manifest(virtkit: Cli, name: str) -> str:
    listed = run_in(virtkit, name, MANIFEST)
    assert "/root/data" in listed and "/etc/mdev.conf" in listed
    return listed


def ok(result: object) -> str:
    assert getattr(result, "returncode", None) == 0, getattr(result, "stderr", result)
    return str(getattr(result, "stdout", ""))


def test_container_snapshot_restore_running_and_stopped(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny("launch", "tiny", "c1", "--container", "--wait", timeout=120))
    run_in(tiny, "c1", SETUP)
    before = manifest(tiny, "c1")
    assert "1000:1000" in before and "4750" in before and "fifo" in before and "os-release absent" in before

    created = ok(tiny("snapshot", "create", "c1", "live"))
    assert created.startswith("Snapshot live of c1 created")
    run_in(tiny, "c1", CHANGE)
    assert manifest(tiny, "c1") != before
    restored = ok(tiny("snapshot", "restore", "c1", "live", "--wait", timeout=120))
    assert "was running: stopped, restored to snapshot live, and started again" in restored
    assert state_of(tiny, "c1")["state"] == "running"
    assert manifest(tiny, "c1") == before

    ok(tiny("stop", "c1", timeout=60))
    assert ok(tiny("snapshot", "create", "c1")).startswith("Snapshot snap0 of c1 created")
    ok(tiny("start", "c1", "--wait", timeout=120))
    run_in(tiny, "c1", CHANGE)
    ok(tiny("stop", "c1", timeout=60))
    assert ok(tiny("snapshot", "restore", "c1", "snap0")) == "Instance c1 restored to snapshot snap0.\n"
    assert state_of(tiny, "c1")["state"] == "stopped"
    ok(tiny("start", "c1", "--wait", timeout=120))
    assert manifest(tiny, "c1") == before

    listed = json.loads(ok(tiny("snapshot", "list", "c1", "--json")))
    assert [(s["name"], s["live"], s["files"], s["stateful"]) for s in listed] == [
        ("live", True, ["upper"], False), ("snap0", False, ["upper"], False),
    ]  # fmt: skip
    assert all(s["size"] > 512 * 1024 for s in listed)  # the random data is in each copy
    shown = ok(tiny("snapshot", "show", "c1", "snap0"))
    assert "Taken while:" in shown and "stopped" in shown
    snapshots = state_root / "instances" / "c1" / "snapshots"
    assert os.stat(snapshots).st_mode & 0o777 == 0o700 and sorted(os.listdir(snapshots)) == ["live", "snap0"]
    assert ok(tiny("snapshot", "delete", "c1", "live")) == "Snapshot live of c1 deleted.\n"
    assert os.listdir(snapshots) == ["snap0"]
    ok(tiny("delete", "--force", "c1", timeout=60))
    assert not (state_root / "instances" / "c1").exists()
    assert_clear_error(tiny("snapshot", "list", "c1"), 1, "instance 'c1' not found")


def test_vm_snapshot_restore_running_and_stopped(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny("launch", "tiny", "v1", "--vm", "--wait", timeout=180))
    # The tiny VM runs from its qcow2 root disk, not from its initramfs: a snapshot holds it.
    assert "/dev/vda on / type ext4" in run_in(tiny, "v1", "mount")
    run_in(tiny, "v1", SETUP)
    before = manifest(tiny, "v1")
    assert "1000:1000" in before and "os-release absent" in before

    created = ok(tiny("snapshot", "create", "v1"))
    assert created.startswith("Snapshot snap0 of v1 created") and "power cut" in created
    run_in(tiny, "v1", CHANGE)
    assert manifest(tiny, "v1") != before
    restored = ok(tiny("snapshot", "restore", "v1", "snap0", "--wait", timeout=180))
    assert "was running: stopped, restored to snapshot snap0, and started again" in restored
    assert manifest(tiny, "v1") == before

    ok(tiny("stop", "v1", timeout=90))
    ok(tiny("snapshot", "create", "v1", "clean"))
    ok(tiny("start", "v1", "--wait", timeout=180))
    run_in(tiny, "v1", CHANGE)
    ok(tiny("stop", "v1", timeout=90))
    assert ok(tiny("snapshot", "restore", "v1", "clean")) == "Instance v1 restored to snapshot clean.\n"
    ok(tiny("start", "v1", "--wait", timeout=180))
    assert manifest(tiny, "v1") == before

    shown = json.loads(ok(tiny("snapshot", "show", "v1", "clean", "--json")))
    assert (shown["disks"], shown["files"], shown["live"], shown["kind"]) == (["root.qcow2"], [], False, "vm")
    ok(tiny("snapshot", "delete", "v1", "snap0"))  # while it runs: through QEMU
    ok(tiny("snapshot", "delete", "v1", "clean"))
    assert json.loads(ok(tiny("snapshot", "list", "v1", "--json"))) == []
    assert os.listdir(state_root / "instances" / "v1" / "snapshots") == []


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file of the state root but its lock files and database (whose shared-memory file a
    mere read touches; what it holds is compared through the CLI): mode, size, mtime."""
    found = {}
    for path in sorted(root.rglob("*")):
        if "locks" in path.parts or path.name.startswith("virtkit.db"):
            continue
        info = os.lstat(path)
        found[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def test_bad_input_gets_clear_errors_and_changes_nothing(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny("create", "tiny", "c2", "--container"))
    ok(tiny("snapshot", "create", "c2", "s1"))
    listed = ok(tiny("snapshot", "list", "c2", "--json"))
    before = _tree(state_root)
    for hostile in ("../x", "x/../../etc", "Bad", "-x", "a b", "s" * 64, ".", "..", "\x1b[2J"):
        for verb in ("create", "restore", "show", "delete"):
            assert_clear_error(tiny("snapshot", verb, "c2", "--", hostile), 2, "invalid snapshot name")
    assert_clear_error(tiny("snapshot", "create", "../c2", "s2"), 2, "invalid instance name")
    assert_clear_error(tiny("snapshot", "create", "nope"), 1, "instance 'nope' not found")
    assert_clear_error(tiny("snapshot", "list", "nope"), 1, "instance 'nope' not found")
    assert_clear_error(tiny("snapshot", "restore", "nope", "s1"), 1, "instance 'nope' not found")
    for verb in ("restore", "show", "delete"):
        assert_clear_error(tiny("snapshot", verb, "c2", "gone"), 1, "snapshot 'gone' of instance 'c2' not")
    assert_clear_error(tiny("snapshot", "create", "c2", "s1"), 1, "snapshot 's1' of instance 'c2' already")
    assert_clear_error(tiny("snapshot", "create", "c2", "s3", "--stateful"), 1, "are not supported: ")
    assert_clear_error(tiny("snapshot", "create", "c2", "s3", "--expiry", "7x"), 2, "invalid expiry '7x'")
    assert_clear_error(tiny("snapshot", "prune"), 2, "give an instance NAME or --all")
    assert_clear_error(tiny("snapshot", "prune", "c2", "--all"), 2, "not both")
    assert_clear_error(tiny("set", "c2", "snapshots.schedule=0 */6 * *"), 2, "4 fields, not 5")
    assert_clear_error(tiny("set", "c2", "snapshots.expiry=soon"), 2, "invalid snapshots.expiry 'soon'")
    assert _tree(state_root) == before
    assert ok(tiny("snapshot", "list", "c2", "--json")) == listed
    assert [i["name"] for i in json.loads(ok(tiny("list", "--json")))] == ["c2"]
