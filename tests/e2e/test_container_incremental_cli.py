"""Incremental exports of containers as a user types them: a running container snapshotted, exported
whole, changed (a file modified, one deleted, one added, a symlink, a mode, a directory removed, an
image file deleted and one brought back), exported `--since` its snapshot while it runs; on a
*different* state root the full archive then the incremental are imported, and the container
started there shows the source's very tree (listing with owners, modes, times, link counts and
checksums, taken inside both). Hostile incrementals get a one-line error and leave the target's
writable layer as it was."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_backup_cli import other  # noqa: F401  (the fixture)
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_snapshot_cli import MANIFEST, ok, run_in
from tests.e2e.test_vm_lifecycle import tiny  # noqa: F401  (the fixture)
from tests.unit.storage.backupbuild import sealed

SETUP = """set -e
mkdir -p /srv/app/sub /srv/big
dd if=/dev/urandom of=/srv/big/blob bs=64k count=64 2>/dev/null
echo config > /srv/app/conf
echo data > /root/data
ln /srv/app/conf /srv/app/conf-link
ln -s ../../root/data /srv/app/sym
echo sub > /srv/app/sub/file
chown 1000:1000 /srv/app/sub /srv/app/conf
chmod 4750 /srv/app/conf
rm /etc/os-release
sync
"""
CHANGE = """set -e
echo more >> /root/data
rm /srv/app/conf-link
echo new > /root/new
ln -s /root/new /srv/app/new-link
chmod 600 /srv/app/conf
rm -rf /srv/app/sub
rm /etc/mdev.conf
echo back > /etc/os-release
sync
"""
# Every entry of the container's own filesystem (not /proc, /sys, /dev, /run, /tmp): name, type,
# owner, mode, size, mtime, content or target. (Link counts: `manifest`, for
# /root and /srv; the image's files are hard-linked to the test session's template on the source.)
LISTING = """for f in $(find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run \\
    -o -path /tmp \\) -prune -o -print | sort); do
  if [ -d "$f" ] && [ ! -L "$f" ]; then stat -c '%n %F %u:%g %a %Y' "$f"; continue; fi
  stat -c '%n %F %u:%g %a %s %Y' "$f"
  if [ -L "$f" ]; then readlink "$f"; elif [ -f "$f" ]; then sha256sum "$f"; fi
done
"""


# /root and /srv with link counts (an image file's count says how the test session shares images).
FILES = MANIFEST.replace(" /etc/mdev.conf", "")


def manifest(cli: Cli, name: str) -> str:
    listed = run_in(cli, name, FILES)
    assert "/root/data" in listed and "/srv/app/conf" in listed
    return listed


def listing(cli: Cli, name: str) -> str:
    listed = run_in(cli, name, LISTING)
    assert "/srv/big/blob" in listed and "/bin/busybox" in listed
    return listed


def layer(root: Path, name: str) -> dict[str, tuple[object, ...]]:
    """The container's writable layer and snapshot directories as the host sees them, entry by entry."""
    home = root / "instances" / name
    found: dict[str, tuple[object, ...]] = {"<entries>": tuple(sorted(os.listdir(home)))}
    for top in (home / "upper", home / "snapshots"):
        for path in [top, *sorted(top.rglob("*"))]:
            info = os.lstat(path)
            content = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else ""
            link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
            found[str(path.relative_to(home))] = (info.st_mode, info.st_uid, info.st_gid, info.st_size,
                                                  info.st_mtime_ns, info.st_ino, content, link)  # fmt: skip
    return found


def _with_base(cli: Cli, name: str, full: Path, *export: str) -> str:
    """Container `name` running with SETUP's files, snapshot `base`, its full export at `full`,
    then CHANGE made; its files' manifest at `base`."""
    ok(cli("launch", "tiny", name, "--container", "--wait", timeout=120))
    run_in(cli, name, SETUP)
    ok(cli("snapshot", "create", name, "base"))
    at_base = manifest(cli, name)
    ok(cli("export", name, str(full), *export, timeout=300))
    run_in(cli, name, CHANGE)
    return at_base


def test_incremental_of_a_running_container_onto_another_root(tiny: Cli, other: Cli,  # noqa: F811
                                                              tmp_path: Path) -> None:  # fmt: skip
    full = tmp_path / "full.tar.zst"
    at_base = _with_base(tiny, "c1", full)
    wanted, files = listing(tiny, "c1"), manifest(tiny, "c1")
    changes = tmp_path / "changes.tar.zst"
    said = ok(tiny("export", "c1", str(changes), "--since", "base", timeout=300))
    assert "the changes since base" in said and "deleted since snapshot base" in said, said
    assert json.loads(ok(tiny("show", "c1", "--json")))["state"] == "running"
    sizes = full.stat().st_size, changes.stat().st_size
    print(f"full archive {sizes[0]} bytes, incremental {sizes[1]} bytes")
    assert sizes[1] * 20 < sizes[0], sizes  # the image and the 4 MiB blob stay out

    ok(other("import", str(full), timeout=300))
    applied = ok(other("import", str(changes), timeout=300))
    assert applied.startswith("Imported container c1") and "changes since snapshot base" in applied
    ok(other("start", "c1", "--wait", timeout=120))
    assert listing(other, "c1") == wanted
    assert manifest(other, "c1") == files
    # the snapshot itself is untouched: restoring it gives back the tree it was taken of
    ok(other("snapshot", "restore", "c1", "base", "--wait", timeout=120))
    assert manifest(other, "c1") == at_base
    assert_clear_error(other("import", str(changes)), 1, "must be stopped")


def reseal(archive: Path, out: Path, deleted: bytes) -> Path:
    """`archive` (uncompressed) with another list of deleted paths, its manifest and checksums
    (the manifest's, the stored digest) made to match, as a hostile exporter would."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar]  # type: ignore[union-attr]
    document = json.loads(members[0][1])
    for entry in document["files"]:
        if entry["id"] == "upper.deleted":
            entry["size"] = len(deleted)
    head = json.dumps(document).encode()
    rewritten = []
    for info, data in members:
        if info.name == "virtkit-backup.json":
            data = head
        elif info.name == "files/upper.deleted":
            data = deleted
        elif info.name == "virtkit-backup.sha256":
            sums = json.loads(data)
            sums["manifest"] = hashlib.sha256(head).hexdigest()
            data = json.dumps(sums).encode()
        info.size = len(data) if info.isreg() else 0
        rewritten.append((info, data))
    out.write_bytes(sealed(rewritten))
    return out


def test_hostile_incrementals_leave_the_container_as_it_was(tiny: Cli, other: Cli,  # noqa: F811
                                                            tmp_path: Path) -> None:  # fmt: skip
    full = tmp_path / "full.tar"
    _with_base(tiny, "c2", full, "--compress", "none")
    changes = tmp_path / "changes.tar"
    ok(tiny("export", "c2", str(changes), "--since", "base", "--compress", "none", timeout=300))
    # the instance missing
    assert_clear_error(other("import", str(changes)), 1, "instance 'c2' not found")
    assert json.loads(ok(other("list", "--json"))) == []
    ok(other("import", str(full), timeout=300))
    root = tmp_path / "other"
    before = layer(root, "c2")
    # another snapshot of the same name: not the one the archive applies to
    ok(tiny("snapshot", "delete", "c2", "base"))
    ok(tiny("snapshot", "create", "c2", "base"))
    foreign = tmp_path / "foreign.tar"
    ok(tiny("export", "c2", str(foreign), "--since", "base", "--compress", "none", timeout=300))
    hostile = [
        (foreign, "of another instance than 'c2'"),
        (reseal(changes, tmp_path / "up.tar", b"../x\0"), "climbs out of the container's layer"),
        (reseal(changes, tmp_path / "abs.tar", b"/etc/passwd\0"), "an absolute path"),
        (reseal(changes, tmp_path / "nothing.tar", b"srv/nothing\0"), "does not hold"),
    ]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(changes.read_bytes()[: changes.stat().st_size * 2 // 3])
    hostile.append((cut, "truncated or corrupt"))
    for archive, needle in hostile:
        assert_clear_error(other("import", str(archive)), 1, needle)
        assert layer(root, "c2") == before, archive.name
    assert not (root / "staging").exists() or not os.listdir(root / "staging")
    ok(other("start", "c2", "--wait", timeout=120))
    running = layer(root, "c2")
    assert_clear_error(other("import", str(changes)), 1, "must be stopped")
    assert layer(root, "c2") == running
    ok(other("stop", "c2", timeout=60))
    ok(other("import", str(changes), timeout=300))  # the genuine one still applies
    assert layer(root, "c2") != before
