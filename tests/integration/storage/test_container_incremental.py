"""Incremental exports of containers through the Python API, as the cold move will call it: a running
container snapshotted, exported whole, changed, exported since that snapshot (still running), and
both archives imported on another state root whose containers show the image's files another way
(idmapped mounts on one side, metacopy copies on the other): the container there then holds the
source's very files, seen from inside. A container with no user namespace, too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import seed_root, tiny_template  # noqa: F401  (the fixture)
from tests.e2e.test_container_incremental_cli import CHANGE, LISTING, SETUP
from tests.permissions import reachable
from virtkit import Host
from virtkit.drivers.oci import idmap, rootfs
from virtkit.errors import NotFoundError
from virtkit.model import InstanceState
from virtkit.ops.backup import Backups
from virtkit.storage import treediff
from virtkit.storage.backupformat import VERSION

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")]


def _host(path: Path, template: Path) -> Host:
    root = reachable(path)
    seed_root(template, root)
    return Host(root=root)


@pytest.fixture
def hosts(tmp_path: Path, tiny_template: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
          ) -> Iterator[tuple[Host, Host, dict[Path, str | None]]]:  # fmt: skip
    """Two state roots with the tiny image; `modes` says how each one's containers get their ids."""
    source, target = _host(tmp_path / "a", tiny_template), _host(tmp_path / "b", tiny_template)
    modes: dict[Path, str | None] = {}
    probed = idmap.host_support

    def support(directory: Path) -> idmap.Support:
        if directory in modes:
            return idmap.Support(modes[directory], "told by the test", "")
        return probed(directory)

    monkeypatch.setattr(idmap, "host_support", support)
    try:
        yield source, target, modes
    finally:
        for host in (source, target):
            for instance in host.instances():
                instance.delete(force=True)
            host.close()


def _run(host: Host, name: str, script: str) -> str:
    done = host.instance(name).exec(["sh", "-c", script])
    assert done.exit_code == 0, done.stderr
    return done.stdout.decode()


@pytest.mark.parametrize(("there", "here"), [
    (rootfs.IDMAPPED, rootfs.METACOPY),
    (rootfs.METACOPY, rootfs.IDMAPPED), (None, None), (rootfs.IDMAPPED, None),
])  # fmt: skip
def test_since_a_snapshot_of_a_running_container(hosts: tuple[Host, Host, dict[Path, str | None]],
                                                 tmp_path: Path, there: str | None,
                                                 here: str | None) -> None:  # fmt: skip
    source, target, modes = hosts
    modes[source.root], modes[target.root] = there, here
    box = source.launch("tiny", "c1", kind="container", wait=True)
    shift = rootfs.saved_shift(source.root / "instances" / "c1")
    assert (shift.mode if shift else None) == there
    _run(source, "c1", SETUP)
    box.snapshot("base")
    exporter = Backups(source.root, source.store)
    full = exporter.export("c1", tmp_path / "full.tar.zst")
    _run(source, "c1", CHANGE)
    wanted = _run(source, "c1", LISTING)
    changes = exporter.export("c1", tmp_path / "changes.tar.zst", since="base")
    assert box.state is InstanceState.RUNNING
    manifest = changes.manifest
    assert manifest.since is not None and manifest.since.snapshot == "base" and manifest.image is None
    assert [(t.id, t.state) for t in manifest.trees] == [("upper", None)] and manifest.snapshots == []
    assert [f.id for f in manifest.files if f.role == "deleted"] == [treediff.DELETED]
    assert changes.size * 20 < full.size

    importer = Backups(target.root, target.store)
    importer.import_archive(full.path)
    done = importer.import_archive(changes.path)
    assert done.notes == ["applied the changes since snapshot base"]
    copied = rootfs.saved_shift(target.root / "instances" / "c1")
    assert (copied.mode if copied else None) == here
    target.instance("c1").start(wait=True)
    assert _run(target, "c1", LISTING) == wanted

    # a second incremental needs a snapshot the target has: base again works, a newer one is unknown
    box.snapshot("later")
    later = exporter.export("c1", tmp_path / "later.tar", compression="none", since="later")
    target.instance("c1").stop()
    with pytest.raises(NotFoundError, match="later"):
        importer.import_archive(later.path)
    _run(source, "c1", "echo third > /root/third")
    wanted = _run(source, "c1", LISTING)
    again = exporter.export("c1", tmp_path / "again.tar", compression="none", since="base")
    importer.import_archive(again.path)
    target.instance("c1").start(wait=True)
    assert _run(target, "c1", LISTING) == wanted


@pytest.mark.parametrize(("there", "here"),
                         [(rootfs.IDMAPPED, rootfs.METACOPY), (rootfs.METACOPY, rootfs.IDMAPPED)])
def test_a_clone_goes_whole_and_its_incremental_follows(hosts: tuple[Host, Host, dict[Path, str | None]],
                                                       tmp_path: Path, there: str | None,
                                                       here: str | None) -> None:  # fmt: skip
    """A linked clone (on the layer its template's changes were frozen into) is carried with the
    whole tree under it; there it rests on that alone, and an incremental goes on top."""
    source, target, modes = hosts
    modes[source.root], modes[target.root] = there, here
    template = source.launch("tiny", "tmpl", kind="container", wait=True)
    _run(source, "tmpl", SETUP)
    template.stop()
    box = template.copy("c1")
    box.start(wait=True)
    box.snapshot("base")
    exporter = Backups(source.root, source.store)
    full = exporter.export("c1", tmp_path / "full.tar.zst")
    assert full.manifest.version == VERSION and "base" in [t.id for t in full.manifest.trees]
    _run(source, "c1", CHANGE)
    wanted = _run(source, "c1", LISTING)
    changes = exporter.export("c1", tmp_path / "changes.tar.zst", since="base")
    assert changes.manifest.version == VERSION and changes.size * 20 < full.size

    importer = Backups(target.root, target.store)
    importer.import_archive(full.path)
    importer.import_archive(changes.path)
    record = target.instance("c1").record
    assert record.layers == [] and record.base == "own"
    target.instance("c1").start(wait=True)
    assert _run(target, "c1", LISTING) == wanted
