"""An incremental archive imported through a remote (api/remote_backups.py, as `virtkit import
--remote` calls it) onto an instance of another name than the archive's, as a local import takes
it: the upload route's `incremental=1`. Refusals come before anything is uploaded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver import servers  # noqa: F401  (the fixture)
from tests.e2e.conftest import seed_root, tiny_template  # noqa: F401  (the fixture)
from tests.integration.test_api_streams import Start, launch, run
from tests.permissions import reachable
from virtkit.api.client import Client
from virtkit.api.remote_backups import RemoteBackups
from virtkit.api.streams import Streams
from virtkit.errors import ConflictError, NotFoundError

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")]


@pytest.fixture
def remote(tmp_path: Path, tiny_template: Path, servers: Start) -> Iterator[tuple[Client, RemoteBackups]]:  # noqa: F811
    root = reachable(tmp_path / "root")
    seed_root(tiny_template, root)
    server = servers(root)
    client = server.client(timeout=120)
    streams = Streams(server.url, timeout=120, client=client)
    yield client, RemoteBackups(streams)
    for instance in client.instances():
        client.run("DELETE", f"/1.0/instances/{instance['name']}", params={"force": True})
    streams.close()


def test_an_incremental_goes_onto_the_named_instance(remote: tuple[Client, RemoteBackups],
                                                     tmp_path: Path) -> None:  # fmt: skip
    client, backups = remote
    launch(client, "c1", "container")
    assert run(client, "c1", "sh", "-c", "echo one > /root/first; sync")["exit_code"] == 0
    client.run("POST", "/1.0/instances/c1/snapshots", json={"name": "base"})
    full = backups.export("c1", tmp_path / "full.tar.zst")
    backups.import_archive(full.path, "c2")
    assert run(client, "c1", "sh", "-c", "echo two > /root/later; rm /root/first; sync")["exit_code"] == 0
    changes = backups.export("c1", tmp_path / "changes.tar", compression="none", since="base")
    assert changes.manifest.since is not None

    with pytest.raises(NotFoundError, match="nope"):
        backups.import_archive(changes.path, "nope")
    with pytest.raises(ConflictError, match="'c2' already exists"):
        backups.import_archive(full.path, "c2")
    done = backups.import_archive(changes.path, "c2")
    assert done.record.name == "c2" and "applied the changes since snapshot base" in done.notes
    client.run("POST", "/1.0/instances/c2/start", json={"wait": True})
    listed = run(client, "c2", "sh", "-c", "cat /root/later; ls /root")["stdout"].split()
    assert listed == ["two", "later"]
