"""A container's volume mounts on the real kernel, without runc: the idmapped staging mount (ids as
the container sees them, writes landing in the container's own terms), and mounting into and out of
a process's own mount namespace (a pivot_root'ed "jail", as a container's) — with the symlinks and
files its root could plant refused, and nothing left on the host."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.permissions import reachable
from virtkit.drivers.oci import mountns, mounts
from virtkit.drivers.oci.mounts import VolumeMount
from virtkit.drivers.oci.rootfs import IDMAPPED, Shift, mounted, mounted_under
from virtkit.errors import SpecError, StateError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

SHIFT = Shift(3_000_000, 3_000_000, 65536, IDMAPPED)
BUSYBOX = Path("/bin/busybox")


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A volume holding a file of (on disk) root's and a directory of user 1000's."""
    directory = reachable(tmp_path / "pool") / "filesystem" / "data"
    directory.mkdir(parents=True)
    (directory / "by-root").write_text("host root's")
    (directory / "home").mkdir()
    os.chown(directory / "home", 1000, 1000)
    return directory


def jail_mounts(pid: int) -> list[str]:
    """The mount points a process sees (its own namespace's)."""
    return [line.split()[4] for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A process in its own mount namespace, its root pivoted into a tiny tree (as runc does);
    (its PID, that tree on the host)."""
    if not BUSYBOX.exists() or shutil.which("pivot_root") is None:
        pytest.skip("needs busybox and pivot_root")
    tree = tmp_path / "jail"
    (tree / "bin").mkdir(parents=True)
    (tree / "old").mkdir()
    shutil.copy(BUSYBOX, tree / "bin" / "busybox")
    inner = "umount -l /old && touch /ready && exec /bin/busybox sleep 60"
    script = (
        f"mount --bind {tree} {tree} && cd {tree} && pivot_root . old && exec /bin/busybox sh -c '{inner}'"
    )
    child = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    deadline = time.monotonic() + 10
    while not (tree / "ready").exists():
        assert child.poll() is None and time.monotonic() < deadline, "the jail did not start"
        time.sleep(0.02)
    try:
        yield child.pid, tree  # unshare and both shells exec: the jail is that very process
    finally:
        child.kill()
        child.wait()


def test_a_stage_shows_the_volume_in_the_containers_ids(volume: Path, tmp_path: Path) -> None:
    stage = tmp_path / "instance" / "volumes" / "vol0"
    stage.parent.parent.mkdir()
    mount = VolumeMount("default/data", str(volume), str(stage), "/mnt/data")
    mounts.attach_stages([mount], SHIFT)
    try:
        assert mounted(stage)
        assert os.stat(stage / "by-root").st_uid == SHIFT.uid  # host root's file: the container's root's
        pid = os.fork()
        if pid == 0:  # as the container's user 1000 would write
            code = 1
            try:
                os.setgroups([])
                os.setresgid(SHIFT.gid + 1000, SHIFT.gid + 1000, SHIFT.gid + 1000)
                os.setresuid(SHIFT.uid + 1000, SHIFT.uid + 1000, SHIFT.uid + 1000)
                (stage / "home" / "by-user").write_text("mine")
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        mounts.detach_stages([mount])
    assert not mounted(stage) and mounted_under(tmp_path) == []
    made = os.stat(volume / "home" / "by-user")
    assert (made.st_uid, made.st_gid) == (1000, 1000)  # on disk, in the container's own terms
    mounts.clear(tmp_path / "instance")  # nothing left: nothing to do


def test_a_missing_volume_directory_is_said(tmp_path: Path) -> None:
    with pytest.raises(StateError, match=r"volume directory .* is missing"):
        mounts.check(str(tmp_path / "gone"), SHIFT)
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(StateError, match="no longer a plain directory"):
        mounts.check(str(tmp_path / "link"), None)


def test_mounting_into_and_out_of_a_running_namespace(jail: tuple[int, Path], volume: Path) -> None:
    pid, tree = jail
    tree_fd = mounts.clone(str(volume), SHIFT)
    try:
        mountns.attach(pid, tree_fd, "/srv/deep/data", SHIFT)
    finally:
        os.close(tree_fd)
    assert "/srv/deep/data" in jail_mounts(pid)
    made = os.stat(tree / "srv" / "deep")
    assert (made.st_uid, made.st_gid) == (SHIFT.uid, SHIFT.gid)  # as runc makes a mount point
    assert not mounted(tree / "srv" / "deep" / "data")  # in its namespace only, not the host's
    argv = ["nsenter", "-t", str(pid), "-m", "-r", "/bin/busybox", "cat", "/srv/deep/data/by-root"]
    reached = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert reached.stdout == "host root's"

    with pytest.raises(StateError, match="not the volume's mount"):
        mountns.detach(pid, "/srv/deep/data", str(tree))  # another directory than the volume's
    mountns.detach(pid, "/srv/deep/data", str(volume))
    assert "/srv/deep/data" not in jail_mounts(pid)
    with pytest.raises(StateError, match="not the volume's mount"):
        mountns.detach(pid, "/srv/deep/data", str(volume))  # nothing mounted there any more


def test_planted_symlinks_and_files_are_refused(jail: tuple[int, Path], volume: Path, tmp_path: Path) -> None:
    pid, tree = jail
    outside = tmp_path / "outside"
    outside.mkdir()
    (tree / "escape").symlink_to(outside)  # absolute: would be the host's without RESOLVE_IN_ROOT
    (tree / "up").symlink_to("../../..")
    (tree / "file").write_text("")
    for destination in ("/escape/x", "/up/x", "/file/x", "/file"):
        tree_fd = mounts.clone(str(volume), None)
        try:
            with pytest.raises(SpecError, match="goes through a symlink or a file"):
                mountns.attach(pid, tree_fd, destination, None)
        finally:
            os.close(tree_fd)
    assert os.listdir(outside) == [] and len(jail_mounts(pid)) == 1  # only its root
    with pytest.raises(StateError, match="is gone"):
        mountns.attach(2**22 + 1, -1, "/x", None)
