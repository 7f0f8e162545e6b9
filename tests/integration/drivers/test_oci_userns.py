"""Containers in their own user namespace, for real (runc, conmon, overlayfs, the tiny image):
root in the container is an unprivileged host uid of its own range, what it writes lands in its
upper layer owned by that uid, the shared image is never changed, two containers get disjoint
ranges, the metacopy fallback boots too, and nothing is left mounted after stop, a failed start
or delete. Driven through ops.Lifecycle, as the CLI does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from virtkit.drivers.oci import idmap, monitor, rootfs
from virtkit.drivers.oci.idmap import SIZE, IdRange, Support
from virtkit.drivers.oci.rootfs import Shift
from virtkit.errors import ToolError
from virtkit.images.staged import ROOTFS
from virtkit.images.store import ImageStore
from virtkit.model import ImageRecord, InstanceKind, InstanceState
from virtkit.ops.images import build_tiny_image
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.store import Store, open_store

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts and runs containers"),
    pytest.mark.skipif(
        shutil.which("runc") is None or shutil.which("conmon") is None, reason="needs runc, conmon"
    ),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="builds the tiny image with apt"),
]

READY_TIMEOUT = 60.0


@dataclass
class Host:
    root: Path
    store: Store
    image: ImageRecord

    @property
    def image_rootfs(self) -> Path:
        return ImageStore(self.root, self.store).path(self.image) / self.image.files[ROOTFS]


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    # Not under pytest's own base directory: another pytest run makes that 0700 again at any
    # moment, and the containers' roots (no host root) must enter every directory above theirs.
    root = Path(tempfile.mkdtemp(prefix="virtkit-userns-", dir="/var/tmp"))
    root.chmod(0o711)  # as virtkit makes a state root
    try:
        with open_store(root) as store:
            yield Host(root, store, build_tiny_image(root, store))
    finally:
        if not rootfs.mounted_under(root):
            shutil.rmtree(root)


@pytest.fixture
def life(host: Host) -> Iterator[Lifecycle]:
    """The lifecycle verbs; every container left is deleted, and nothing may stay mounted."""
    lifecycle = Lifecycle(host.root, host.store)
    yield lifecycle
    for view in lifecycle.views():
        console = lifecycle.paths(view.record.name).console_log
        if console.exists():  # pytest shows this only for a failed test
            print(f"--- console of {view.record.name} ---\n{console.read_text(errors='replace')[-3000:]}")
        lifecycle.delete(view.record.name, force=True)
    assert rootfs.mounted_under(host.root) == []


def _launch(life: Lifecycle, name: str, **config: str) -> None:
    request = Request(image="tiny", name=name, kind=InstanceKind.CONTAINER, memory=64 << 20, config=config)
    _record, runtime = life.launch(request, wait=True)
    assert runtime.notices == []


def _sh(life: Lifecycle, name: str, script: str) -> str:
    done = life.exec(name, ["sh", "-c", script], timeout=30)
    assert done.exit_code == 0, done.stderr
    return done.stdout.decode()


def _ids(pid: int) -> tuple[list[str], list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid = next(line for line in lines if line.startswith("Uid:")).split()[1:]
    gid = next(line for line in lines if line.startswith("Gid:")).split()[1:]
    return uid, gid


def _image_owners(tree: Path) -> set[tuple[int, int]]:
    owners = {(tree.lstat().st_uid, tree.lstat().st_gid)}
    for directory, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            info = os.lstat(os.path.join(directory, name))
            owners.add((info.st_uid, info.st_gid))
    return owners


def test_container_root_is_its_own_unprivileged_host_uid(host: Host, life: Lifecycle) -> None:
    _launch(life, "u1")
    paths = life.paths("u1")
    shift = rootfs.saved_shift(paths.dir)
    assert shift is not None and shift.uid >= SIZE and shift.gid >= SIZE
    status = life.view("u1").status
    assert status.state is InstanceState.RUNNING and status.pid is not None
    assert _ids(status.pid) == ([str(shift.uid)] * 4, [str(shift.gid)] * 4)  # its init on the host

    inside = _sh(life, "u1", "id -u; id -g; cat /proc/self/uid_map; stat -c %u:%g /bin/busybox /etc/passwd /")
    assert inside.split() == ["0", "0", "0", str(shift.uid), str(SIZE), "0:0", "0:0", "0:0"]
    _sh(life, "u1", "echo mine > /root/made && chown 33:33 /root/made && echo x >> /etc/hostname")
    made = (paths.dir / "upper" / "root" / "made").stat()
    assert (made.st_uid, made.st_gid) == (shift.uid + 33, shift.gid + 33)
    copied = (paths.dir / "upper" / "etc" / "hostname").stat()  # copied up, owner kept (shifted)
    assert (copied.st_uid, copied.st_gid) == (shift.uid, shift.gid)

    assert _image_owners(host.image_rootfs) == {(0, 0)}  # the shared image is never changed
    assert not (host.image_rootfs / "root" / "made").exists()
    assert (host.image_rootfs / "etc" / "hostname").read_text().count("x") == 0
    assert rootfs.mounted_under(paths.dir) == [str(paths.dir / "rootfs")]  # the staged image is gone


def test_two_containers_get_disjoint_ranges_kept_across_restarts(host: Host, life: Lifecycle) -> None:
    _launch(life, "d1")
    _launch(life, "d2")
    one, two = (rootfs.saved_shift(life.paths(n).dir) for n in ("d1", "d2"))
    assert one is not None and two is not None
    assert not IdRange(one.uid, one.size).overlaps(IdRange(two.uid, two.size))
    assert not IdRange(one.gid, one.size).overlaps(IdRange(two.gid, two.size))
    assert _sh(life, "d2", "cat /proc/self/uid_map").split() == ["0", str(two.uid), str(SIZE)]

    _sh(life, "d1", "echo kept > /root/kept")
    life.stop("d1")
    assert rootfs.mounted_under(life.paths("d1").dir) == []
    life.start("d1", wait=True, timeout=READY_TIMEOUT)
    assert rootfs.saved_shift(life.paths("d1").dir) == one
    assert _sh(life, "d1", "cat /root/kept; stat -c %u /root/kept").split() == ["kept", "0"]
    life.delete("d1", force=True)
    life.delete("d2", force=True)
    assert rootfs.mounted_under(host.root) == [] and not life.paths("d1").dir.exists()


def test_a_failed_start_leaves_nothing_mounted(
    host: Host, life: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise ToolError("conmon refused (test)")

    monkeypatch.setattr(monitor, "launch", refuse)
    request = Request(image="tiny", name="f1", kind=InstanceKind.CONTAINER, memory=64 << 20)
    with pytest.raises(ToolError, match="conmon refused"):
        life.launch(request)
    assert rootfs.mounted_under(host.root) == [] and not life.paths("f1").dir.exists()


def test_opting_out_runs_as_host_root(host: Host, life: Lifecycle) -> None:
    _launch(life, "h1", idmap="host")
    status = life.view("h1").status
    assert status.pid is not None and _ids(status.pid)[0] == ["0"] * 4
    assert rootfs.saved_shift(life.paths("h1").dir) is None
    assert _sh(life, "h1", "cat /proc/self/uid_map").split() == ["0", "0", "4294967295"]


def test_the_metacopy_fallback_boots_and_copies_no_data(
    host: Host, life: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idmap, "host_support", lambda _dir: Support(rootfs.METACOPY))
    began = time.monotonic()
    _launch(life, "m1")
    print(f"metacopy container created and booted in {time.monotonic() - began:.2f} s")
    paths = life.paths("m1")
    shift = rootfs.saved_shift(paths.dir)
    assert shift is not None and shift.mode == rootfs.METACOPY
    assert _sh(life, "m1", "stat -c %u:%g /bin/busybox; /bin/busybox true && echo ran").split() == [
        "0:0",
        "ran",
    ]
    upper = (paths.dir / "upper" / "bin" / "busybox").stat()
    whole = (host.image_rootfs / "bin" / "busybox").stat().st_size
    # its metadata copied up (a sparse file; a block for its xattrs at most), not its data
    assert upper.st_uid == shift.uid and upper.st_size == whole and upper.st_blocks * 512 <= 4096
    assert "metacopy=on" in next(
        line
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if str(paths.dir / "rootfs") in line
    )
    life.stop("m1")
    life.start("m1", wait=True, timeout=READY_TIMEOUT)  # mounted again with metacopy=on: files still whole
    assert _sh(life, "m1", "wc -c < /bin/busybox").strip() == str(whole)
    assert _image_owners(host.image_rootfs) == {(0, 0)}


def test_the_probe_finds_a_way_here(host: Host) -> None:
    mode, why = rootfs.probe(host.root, 1_000_000, 1_000_000, SIZE)
    print(f"rootfs under a user namespace here: {mode} {why}")
    assert mode in (rootfs.IDMAPPED, rootfs.METACOPY), why
    assert rootfs.mounted_under(host.root) == [] and not list(host.root.glob(".rootfs-probe.*"))
    ok, detail = idmap.check_host(host.root)
    print(detail)
    assert ok, detail
    assert Shift(1_000_000, 1_000_000, SIZE, mode).uid_maps()[0].host == 1_000_000


def test_host_check_says_when_user_namespaces_are_disabled() -> None:
    # max_user_namespaces is per user namespace: set to 0 in a throwaway one, not on the host.
    script = (
        "echo 0 > /proc/sys/user/max_user_namespaces && exec "
        f"{sys.executable} -c 'from virtkit.drivers.oci import idmap; print(idmap.check_host())'"
    )
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("(False, ") and "max_user_namespaces is 0" in done.stdout
    assert "sysctl -w user.max_user_namespaces" in done.stdout
