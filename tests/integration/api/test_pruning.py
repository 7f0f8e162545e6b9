"""`virtkit serve` applies snapshot expiry (and schedules) by itself: its snapshot timer
(api/pruning.py) runs `snapshot prune --all` every --prune-every seconds; 0 turns it off."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.apiserver import VIRTKIT, Server, servers  # noqa: F401  (the fixture)
from tests.e2e.conftest import seed_root, tiny_template  # noqa: F401  (the session fixture)
from tests.integration.api.conftest import virtkit

pytestmark = pytest.mark.root


@pytest.fixture
def root(api_root: Path, tiny_template: Path) -> Iterator[Path]:  # noqa: F811
    seed_root(tiny_template, api_root)
    assert virtkit(api_root, "create", "tiny", "c1", "--container").returncode == 0
    for args in (("keep",), ("tmp", "--expiry", "1s")):
        made = virtkit(api_root, "snapshot", "create", "c1", *args)
        assert made.returncode == 0, made.stderr
    yield api_root
    virtkit(api_root, "delete", "--force", "c1", timeout=120)


def snapshots(root: Path) -> list[str]:
    listed = virtkit(root, "snapshot", "list", "c1", "--json")
    assert listed.returncode == 0, listed.stderr
    return sorted(s["name"] for s in json.loads(listed.stdout))


def test_the_server_deletes_expired_snapshots(root: Path, servers: Callable[..., Server]) -> None:  # noqa: F811
    server = servers(root, args=("--prune-every", "1"))
    deadline = time.monotonic() + 30
    while snapshots(root) != ["keep"]:
        assert time.monotonic() < deadline, f"not pruned:\n{server.output()[-2000:]}"
        time.sleep(0.5)


def test_prune_every_0_leaves_them(root: Path, servers: Callable[..., Server]) -> None:  # noqa: F811
    servers(root, args=("--prune-every", "0"))
    time.sleep(3)
    assert snapshots(root) == ["keep", "tmp"]


@pytest.mark.parametrize("value", ["-1", "abc", "86401", "1.5", ""])
def test_a_bad_interval_is_refused(tmp_path: Path, value: str) -> None:
    done = subprocess.run([str(VIRTKIT), "--root", str(tmp_path / "r"), "serve", "--prune-every", value],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 2 and "--prune-every" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r" / "unix.socket").exists()
