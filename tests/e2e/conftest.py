"""The CLI as a user types it: the installed `virtkit` script run as a subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import cliproc
from tests.permissions import reachable

VIRTKIT = Path(sys.executable).parent / "virtkit"

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def state_root(tmp_path: Path) -> Path:
    """A fresh state root (not yet created: virtkit creates it on first use), reachable by QEMU's user."""
    return reachable(tmp_path / "root")


@pytest.fixture
def virtkit(state_root: Path) -> Cli:
    """Run `virtkit ARGS...` against the test's own state root; returns the finished process."""

    def run(
        *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "VIRTKIT_ROOT": str(state_root), **(env or {})}
        return cliproc.run([str(VIRTKIT), *args], timeout=timeout, env=full_env)

    return run


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state root holding the tiny image, built once per test session (3 s a build)."""
    root = reachable(tmp_path_factory.mktemp("tiny-template") / "root")
    env = {**os.environ, "VIRTKIT_ROOT": str(root)}
    built = subprocess.run([str(VIRTKIT), "image", "build", "tiny"], capture_output=True, text=True,
                           timeout=300, env=env, check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr
    return root


def seed_root(template: Path, root: Path) -> None:
    """Make `root` a state root holding what `template` holds: its database copied, its images
    hard-linked (an image's files are never written; deleting one unlinks the test's links only)."""
    root.mkdir(mode=0o711)
    os.chmod(root, 0o711)
    with sqlite3.connect(template / "virtkit.db") as source, sqlite3.connect(root / "virtkit.db") as copy:
        source.backup(copy)
    os.chmod(root / "virtkit.db", 0o600)
    subprocess.run(["cp", "-al", str(template / "images"), str(root / "images")], check=True)


def debian_root(tmp_path_factory: pytest.TempPathFactory, flavour: str) -> Iterator[tuple[Cli, Path]]:
    """A state root with the Debian image of `flavour` (vm or container) built in it, and a CLI for
    it; every instance left is deleted at the end, its logs printed."""
    root = reachable(tmp_path_factory.mktemp(f"debian-{flavour}") / "root")  # QEMU runs as virtkit-qemu

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VIRTKIT_ROOT": str(root)}
        return cliproc.run([str(VIRTKIT), *args], timeout=timeout, env=env)

    began = time.monotonic()
    built = run("image", "build", "debian", "--flavour", flavour, "--json", timeout=1800)
    assert built.returncode == 0, built.stderr
    print(f"debian {flavour} image built in {time.monotonic() - began:.1f} s")
    yield run, root
    for instance in json.loads(run("list", "--json").stdout or "[]"):
        for log in ("console.log", "runtime.log"):
            path = root / "instances" / instance["name"] / log
            if path.exists():
                print(f"--- {log} of {instance['name']} ---\n{path.read_text(errors='replace')[-4000:]}")
        run("delete", "--force", instance["name"], timeout=120)


@pytest.fixture(scope="session")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Path]]:
    """The debian-bookworm VM image's root, built once per session (test_vm_debian)."""
    yield from debian_root(tmp_path_factory, "vm")
