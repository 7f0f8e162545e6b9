"""The Python library (virtkit/library.py) over a real state root: the CLI's errors, the CLI's state."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import virtkit
from tests.e2e.conftest import seed_root, tiny_template  # noqa: F401  (the fixture)
from tests.permissions import reachable
from virtkit import Host
from virtkit.errors import ConflictError, NotFoundError, SpecError, StateError
from virtkit.model import InstanceState

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")]


@pytest.fixture
def host(tmp_path: Path, tiny_template: Path) -> Iterator[Host]:  # noqa: F811
    root = reachable(tmp_path / "root")
    seed_root(tiny_template, root)
    with Host(root=root) as made:
        yield made
        for instance in made.instances():
            instance.delete(force=True)


def test_the_top_level_names_are_the_library_s() -> None:
    assert virtkit.Host is Host and "Host" in virtkit.__all__
    with pytest.raises(AttributeError):
        virtkit.Nothing  # type: ignore[attr-defined]  # noqa: B018


def test_a_container_s_life_through_the_library(host: Host) -> None:
    box = host.launch("tiny", "c1", kind="container", memory="64MiB", wait=True)
    assert box.state is InstanceState.RUNNING and box.kind.value == "container"
    done = box.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (done.exit_code, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    box.set(memory="96MiB")
    assert box.record.memory == 96 << 20
    box.pause()
    assert box.state is InstanceState.PAUSED
    box.resume().stop()
    assert box.state is InstanceState.STOPPED
    assert [i.name for i in host.instances()] == ["c1"]
    box.delete()
    assert host.instances() == []


def test_errors_are_the_cli_s_and_change_nothing(host: Host) -> None:
    with pytest.raises(SpecError, match="invalid instance name"):
        host.launch("tiny", "Bad_Name")
    with pytest.raises(SpecError, match="memory"):
        host.launch("tiny", "c2", memory="lots")
    with pytest.raises(NotFoundError, match="image 'nope'"):
        host.launch("nope", "c2")
    with pytest.raises(NotFoundError):
        host.instance("c2")
    assert host.instances() == []
    box = host.create("tiny", "c2", kind="container")
    with pytest.raises(ConflictError):
        host.create("tiny", "c2", kind="container")
    with pytest.raises(StateError):
        box.stop()
    assert [i.name for i in host.instances()] == ["c2"] and box.state is InstanceState.STOPPED
