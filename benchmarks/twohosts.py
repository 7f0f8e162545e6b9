"""Two state roots on this machine standing for two hosts, for the move benchmarks
(migration.py, move_cold.py): the CLI run against a root, a second root seeded with the first's
images, and `virtkit serve` over TLS on loopback for the second."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

VIRTKIT = Path(sys.executable).parent / "virtkit"


def vk(root: Path, *args: str, config: Path, timeout: float = 600) -> str:
    """`virtkit ARGS` on the state root `root` with the CLI config `config`: its output."""
    env = {**os.environ, "VIRTKIT_ROOT": str(root), "VIRTKIT_CONFIG_DIR": str(config)}
    done = subprocess.run([str(VIRTKIT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"virtkit {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def seed(template: Path, root: Path) -> None:
    """A new state root `root` with the store and (hard-linked) images of `template`."""
    root.mkdir(mode=0o711)
    with sqlite3.connect(template / "virtkit.db") as source, sqlite3.connect(root / "virtkit.db") as copy:
        source.backup(copy)
    subprocess.run(["cp", "-al", str(template / "images"), str(root / "images")], check=True)


def serve(root: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    """`virtkit serve` of `root` on 127.0.0.1:`port`, once it listens."""
    argv = [str(VIRTKIT), "--root", str(root), "serve", "--listen", f"127.0.0.1:{port}"]
    with open(log, "ab") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "listening on" not in log.read_text(errors="replace"):
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"virtkit serve did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return server


@contextlib.contextmanager
def two_hosts(prefix: str, port: int) -> Iterator[tuple[Path, Path, Path, Path]]:
    """In this (fresh) network namespace: state root A with the tiny image, root B seeded from it
    and served on 127.0.0.1:`port`, known to A's CLI config as remote `b` with an admin token:
    (work directory, A, B, config). The server is stopped and everything removed at the end."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(work, 0o755)
    a, b, config = work / "a", work / "b", work / "config"
    server = None
    try:
        vk(a, "image", "build", "tiny", config=config)
        seed(a, b)
        made = vk(b, "token", "create", "bench", "--role", "admin", "--json", config=config)
        token = json.loads(made)["token"]
        server = serve(b, work / "serve.log", port)
        vk(a, "remote", "add", "b", f"https://127.0.0.1:{port}", "--token", token, "--accept-certificate",
           config=config)  # fmt: skip
        yield work, a, b, config
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(work, ignore_errors=True)
