"""systemd as a container's init (drivers/oci/systemd.py) and what the plan makes of it: found
through the image's own symlinks, the host's name=systemd hierarchy or a clear refusal, a
terminal for its console, its cgroup delegated to a user namespace's root, its own exit awaited."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.drivers.base import InstancePaths
from virtkit.drivers.oci import systemd
from virtkit.drivers.oci.plan import build_spec
from virtkit.drivers.oci.spec import ContainerSpec, IdMap
from virtkit.errors import HostCapabilityError
from virtkit.host import cgroups
from virtkit.host.cgroups import Mount
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, MiB

HYBRID = [
    Mount("tmpfs", "/sys/fs/cgroup", "tmpfs", frozenset({"rw", "mode=755"})),
    Mount("cgroup", "/sys/fs/cgroup/memory", "cgroup", frozenset({"rw", "memory"})),
    Mount("cgroup", "/sys/fs/cgroup/systemd", "cgroup", frozenset({"rw", "name=systemd"})),
    Mount("cgroup2", "/sys/fs/cgroup/unified", "cgroup2", frozenset({"rw"})),
]


def _debian_tree(root: Path) -> Path:
    """Debian's merged-/usr layout: /sbin -> usr/sbin, /lib -> usr/lib, init -> ../lib/systemd/systemd."""
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/systemd").write_text("")
    (root / "usr/sbin").mkdir()
    (root / "usr/sbin/init").symlink_to("../lib/systemd/systemd")
    (root / "sbin").symlink_to("usr/sbin")
    (root / "lib").symlink_to("usr/lib")
    return root


def test_init_is_found_through_the_trees_own_links(tmp_path: Path) -> None:
    tree = _debian_tree(tmp_path / "debian")
    assert systemd.resolve_in(tree, "/sbin/init") == "/usr/lib/systemd/systemd"
    assert systemd.is_systemd(tree, "/sbin/init")
    busybox = tmp_path / "busybox"
    (busybox / "bin").mkdir(parents=True)
    (busybox / "bin/busybox").write_text("")
    (busybox / "sbin").mkdir()
    (busybox / "sbin/init").symlink_to("/bin/busybox")  # absolute: from the tree, not the host
    assert systemd.resolve_in(busybox, "/sbin/init") == "/bin/busybox"
    assert not systemd.is_systemd(busybox, "/sbin/init")
    (busybox / "sbin/loop").symlink_to("loop")
    (busybox / "sbin/gone").symlink_to("/nowhere/systemd")
    assert systemd.resolve_in(busybox, "/sbin/loop") is None
    assert not systemd.is_systemd(busybox, "/sbin/gone") and not systemd.is_systemd(busybox, "/sbin/none")


def test_the_name_systemd_hierarchy_or_a_clear_refusal() -> None:
    assert systemd.host_hierarchy(HYBRID) == "/sys/fs/cgroup/systemd"
    with pytest.raises(HostCapabilityError, match="no cgroup v1 name=systemd hierarchy") as caught:
        systemd.host_hierarchy(HYBRID[:2])
    assert caught.value.hint and "name=systemd" in caught.value.hint
    v2 = [Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", frozenset({"rw"}))]
    with pytest.raises(HostCapabilityError, match="cgroup v2-only host"):
        systemd.host_hierarchy(v2)


def _image(rootfs: Path, os_name: str) -> ImageRecord:
    return ImageRecord(
        fingerprint="0" * 64, name=os_name, kinds=[InstanceKind.CONTAINER], format=os_name,
        files={"rootfs": rootfs.name}, properties={"os": os_name, "init": "/sbin/init"},
    )  # fmt: skip


def test_the_plan_gives_systemd_its_hierarchy_and_a_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "read_mounts", lambda _root: HYBRID)
    record = InstanceRecord(name="d1", kind=InstanceKind.CONTAINER, cpus=1, memory=512 * MiB)
    paths = InstancePaths.of(tmp_path / "root", "d1")
    _debian_tree(tmp_path / "rootfs")
    spec = build_spec(record, _image(tmp_path / "rootfs", "debian"), tmp_path, paths)
    assert (spec.system, spec.args, spec.stop_signal) == (True, ("/sbin/init",), "SIGRTMIN+3")
    # PID 1 systemd writes only to /dev/console, which runc makes for a terminal alone.
    assert spec.systemd_hierarchy == "/sys/fs/cgroup/systemd" and spec.terminal
    assert systemd.exits_when_halted(spec)

    tiny = tmp_path / "tiny"
    (tiny / "sbin").mkdir(parents=True)
    (tiny / "sbin/init").write_text("")
    spec = build_spec(record, _image(tiny, "busybox"), tmp_path, paths)
    # every system container's init has a terminal: its console (`virtkit console`)
    assert (spec.systemd_hierarchy, spec.terminal, spec.stop_signal) == ("", True, "SIGUSR2")
    assert not systemd.exits_when_halted(spec)  # busybox init stays as the last process


def _spec(hierarchy: Path, **changes: object) -> ContainerSpec:
    values: dict[str, object] = dict(
        name="d1", uuid="7c9e6679-7425-40de-944b-e07fc1f90ae7", hostname="d1", rootfs="/r",
        args=("/sbin/init",), system=True, stop_signal="SIGRTMIN+3", cgroup="/virtkit/d1.7c9e6679",
        systemd_hierarchy=str(hierarchy),
    )  # fmt: skip
    values.update(changes)
    return ContainerSpec(**values)  # type: ignore[arg-type]


def test_a_user_namespaces_root_gets_its_own_systemd_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owners: dict[str, tuple[int, int]] = {}
    monkeypatch.setattr(systemd.os, "chown", lambda path, uid, gid: owners.update({str(path): (uid, gid)}))
    systemd.delegate(_spec(tmp_path))  # no user namespace: host root owns it already
    assert owners == {} and not (tmp_path / "virtkit").exists()

    ids = (IdMap(0, 1_000_000, 65536),)
    systemd.delegate(_spec(tmp_path, uid_maps=ids, gid_maps=(IdMap(0, 2_000_000, 65536),)))
    cgroup = tmp_path / "virtkit" / "d1.7c9e6679"
    assert cgroup.is_dir()
    expected = [cgroup, *(cgroup / name for name in ("cgroup.procs", "tasks", "cgroup.clone_children"))]
    assert owners == {str(path): (1_000_000, 2_000_000) for path in expected}
    # Never notify_on_release: that would have the host's release agent run for the container.
    assert not any(path.endswith("notify_on_release") for path in owners)


def test_delegating_on_a_host_that_refuses_says_so(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    spec = _spec(tmp_path / "file", uid_maps=(IdMap(0, 1_000_000, 65536),))
    with pytest.raises(HostCapabilityError, match="cannot give container d1 its name=systemd cgroup"):
        systemd.delegate(spec)
