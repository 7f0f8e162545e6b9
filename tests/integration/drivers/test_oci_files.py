"""The container driver's file copies on a real overlay (root; no runc): a stopped container's root
filesystem mounted for the copy and unmounted after, and a "running" one reached through its
init's /proc/PID/root (here a forked process chrooted into a tree). The tree is hostile: links
out of it everywhere. Nothing outside may be read or written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtkit.drivers.base import InstancePaths
from virtkit.drivers.oci import files, rootfs
from virtkit.errors import ConflictError, NotFoundError, SpecError

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="mounts overlays")]

MAPS = [{"containerID": 0, "hostID": 200000, "size": 65536}]


class State:
    """The OCI runtime's answer, as the test sets it."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] | None = None

    def state(self, cid: str) -> dict[str, Any] | None:
        return self.answer


def _hostile(tree: Path, outside: Path) -> None:
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "shadow").write_text("container shadow")
    (tree / "escape").symlink_to("/etc")
    (tree / "up").symlink_to("../../../../../../../../etc")
    (tree / "x").symlink_to(outside / "secret")
    (tree / "outdir").symlink_to(outside)
    (tree / "dir").mkdir()
    os.mkfifo(tree / "fifo")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret").write_text("host secret")
    return tmp_path / "host"


@pytest.fixture
def container(tmp_path: Path, outside: Path) -> Iterator[tuple[files.Container, State]]:
    lower, instance = tmp_path / "image", tmp_path / "root" / "instances" / "c1"
    _hostile(lower, outside)
    for name in ("upper", "work"):
        (instance / name).mkdir(parents=True)
    bundle = {"linux": {"uidMappings": MAPS, "gidMappings": MAPS}}
    runtime = {"kind": "container", "argv": [], "config": {"lower": str(lower), "bundle": bundle}}
    (instance / "runtime.json").write_text(json.dumps(runtime))
    state = State()
    yield files.Container("c1", "c1.0000", state, InstancePaths(instance)), state
    rootfs.unmount(instance / "rootfs")
    assert rootfs.mounted_under(tmp_path) == []


def _push(container: files.Container, path: str, data: bytes = b"pushed", **ids: int) -> int:
    return files.push(container, path, io.BytesIO(data), uid=ids.get("uid", 0), gid=ids.get("gid", 0),
                      mode=ids.get("mode", 0o644))  # fmt: skip


def _pull(container: files.Container, path: str) -> bytes:
    out = io.BytesIO()
    files.pull(container, path, out)
    return out.getvalue()


def test_a_stopped_container_is_mounted_for_the_copy_only(
    container: tuple[files.Container, State], outside: Path, tmp_path: Path
) -> None:
    target, _state = container
    merged = target.files.merged
    assert _pull(target, "/escape/shadow") == _pull(target, "/up/shadow") == b"container shadow"
    assert not rootfs.mounted(merged)
    assert _push(target, "/escape/pwned", uid=5, gid=7, mode=0o640) == len(b"pushed")
    written = target.files.upper / "etc" / "pwned"
    info = os.stat(written)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (200005, 200007, 0o640)  # mapped
    assert not Path("/etc/pwned").exists() and not rootfs.mounted(merged)
    with pytest.raises(NotFoundError, match="no such file or directory"):
        _push(target, "/outdir/planted")  # /outdir -> the host dir: a path that, inside, does not exist
    assert list(outside.iterdir()) == [outside / "secret"]
    assert [p.name for p in (tmp_path / "image" / "etc").iterdir()] == ["shadow"]  # the image: untouched


def test_links_out_of_the_root_lead_nowhere(container: tuple[files.Container, State], outside: Path) -> None:
    target, _state = container
    with pytest.raises(NotFoundError, match=r"cannot read /x in c1: no such file"):
        _pull(target, "/x")
    _push(target, "/x", b"replaced")  # the link itself is replaced, never followed
    assert (outside / "secret").read_text() == "host secret"
    assert not (target.files.upper / "x").is_symlink() and _pull(target, "/x") == b"replaced"


def test_what_is_refused(container: tuple[files.Container, State]) -> None:
    target, _state = container
    began = time.monotonic()
    with pytest.raises(SpecError, match="/fifo in c1 is a FIFO: only regular files can be pulled"):
        _pull(target, "/fifo")  # never opened for reading: no wait for a writer
    assert time.monotonic() - began < 10
    with pytest.raises(SpecError, match="/dir in c1 is a directory: only regular files") as caught:
        _pull(target, "/dir")
    assert caught.value.hint is not None and "tar" in caught.value.hint
    with pytest.raises(ConflictError, match="/dir in c1 is a directory: a file cannot replace it"):
        _push(target, "/dir")
    with pytest.raises(NotFoundError, match="no such file or directory"):
        _push(target, "/nodir/f")
    with pytest.raises(SpecError, match="uid 70000 does not exist in c1's user namespace"):
        _push(target, "/f", uid=70000)
    assert not [p for p in (target.files.upper).rglob(".virtkit-push.*")]


def test_a_root_still_mounted_stays_mounted(container: tuple[files.Container, State], tmp_path: Path) -> None:
    target, _state = container
    files_ = target.files
    rootfs.mount(rootfs.Layers(tmp_path / "image", files_.upper, files_.work, files_.merged))
    _push(target, "/etc/kept")
    assert rootfs.mounted(files_.merged) and (files_.merged / "etc" / "kept").read_bytes() == b"pushed"


@pytest.fixture
def init(tmp_path: Path, outside: Path) -> Iterator[tuple[int, Path]]:
    """A process chrooted into a hostile tree with its own /proc: a container's init, for files."""
    tree = tmp_path / "live"
    _hostile(tree, outside)
    (tree / "proc").mkdir()
    os.system(f"mount -t proc proc {tree / 'proc'}")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.chroot(tree)
            os.chdir("/")
            time.sleep(120)
        finally:
            os._exit(0)
    yield pid, tree
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    os.system(f"umount {tree / 'proc'}")


def test_a_live_container_is_reached_through_its_init(
    container: tuple[files.Container, State], init: tuple[int, Path], outside: Path
) -> None:
    target, state = container
    pid, tree = init
    state.answer = {"status": "running", "pid": pid}
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{pid}/root") != str(tree):  # the child has not chrooted yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _pull(target, "/escape/shadow") == b"container shadow"
    _push(target, "/up/live", uid=1)
    assert (tree / "etc" / "live").stat().st_uid == 200001 and not Path("/etc/live").exists()
    with pytest.raises(SpecError, match="magic link"):
        _pull(target, "/proc/self/root/etc/shadow")
    with pytest.raises(SpecError, match="magic link"):
        _pull(target, f"/proc/{pid}/root/etc/shadow")
    assert not rootfs.mounted(target.files.merged)  # a live one is never mounted by a copy
    assert list(outside.iterdir()) == [outside / "secret"]
    os.kill(pid, signal.SIGKILL)  # the init died; the runtime still said running when first asked
    os.waitpid(pid, 0)
    assert _pull(target, "/etc/shadow") == b"container shadow"  # from the mounted root filesystem
