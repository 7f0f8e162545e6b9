"""`virtkit convert` on a real guest disk: the cached Debian bookworm tree (kernel, initramfs-tools)
in an MBR-partitioned disk made as an emulated-hardware guest has it (/dev/sda1 names, ens33, a
persistent-net rule, an initramfs of MODULES=list without virtio), converted offline for real:
update-initramfs runs chrooted in the guest and the new initrd holds virtio_blk.ko. Booted on a
virtio disk (QEMU, TCG: the disk's own kernel and initrd, direct) it gives up waiting for its root
before the conversion, and comes to a login prompt after it."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import VIRTKIT
from virtkit.errors import NotFoundError, RejectedError, SpecError, StateError
from virtkit.model import InstanceKind, InstanceRecord, InstanceState, Nic
from virtkit.ops.convert import convert
from virtkit.storage import guestdisk
from virtkit.store import SqliteStore, open_store

MiB = 1 << 20
TREES = os.path.expanduser("~/.cache/virtkit/debian/trees/bookworm-amd64-*/tree")
MAC = "52:54:00:12:34:56"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 600

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root"),
]


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600).stdout


def _in_fs(raw: Path, work: object) -> object:
    """`work(mounted)` with the disk's first partition mounted, in a private mount namespace."""
    with guestdisk.attached(raw) as parts:
        point = raw.parent / "mnt"
        point.mkdir(exist_ok=True)

        def run() -> object:
            guestdisk.mount(parts[0].loop, point, "ext4")
            try:
                return work(point)  # type: ignore[operator]
            finally:
                guestdisk.unmount_all(point)

        return guestdisk.in_private_namespace(run)


def _emulated(guest: Path) -> None:
    """The guest as an emulated-hardware VM had it; /etc/default/grub a link out of the guest."""
    (guest / "etc/fstab").write_text(
        "/dev/sda1 / ext4 errors=remount-ro 0 1\n/dev/sdb1 /srv ext4 nofail 0 2\n"
    )
    (guest / "boot/extlinux").mkdir(exist_ok=True)
    (guest / "boot/extlinux/extlinux.conf").write_text("LABEL l\n  APPEND root=/dev/sda1 ro console=ttyS0\n")
    (guest / "etc/network").mkdir(exist_ok=True)
    (guest / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\nauto ens33\niface ens33 inet dhcp\n"
    )
    (guest / "etc/udev/rules.d").mkdir(parents=True, exist_ok=True)
    (guest / "etc/udev/rules.d/70-persistent-net.rules").write_text('SUBSYSTEM=="net", NAME="eth0"\n')
    canary = os.environ["VK_CANARY"]
    (guest / "etc/default").mkdir(exist_ok=True)
    (guest / "etc/default/grub").unlink(missing_ok=True)
    os.symlink("../../../../../../../.." + canary, guest / "etc/default/grub")
    # an initramfs made on emulated hardware: the AHCI/SCSI disk drivers and ext4, no virtio at all
    (guest / "etc/initramfs-tools/conf.d/zz-emulated.conf").write_text("MODULES=list\n")
    (guest / "etc/initramfs-tools/modules").write_text("ahci\nsd_mod\next4\n")
    for name in ("proc", "sys", "dev"):
        guestdisk.bind(f"/{name}", guest / name)
    subprocess.run(
        ["chroot", str(guest), "update-initramfs", "-u", "-k", "all"],
        env={"PATH": PATH},
        check=True,
        capture_output=True,
        timeout=900,
    )


def debian_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached Debian bookworm tree of the VM image (kernel, initramfs-tools): made by
    `virtkit image build debian --flavour vm` (into a throwaway root) when not cached yet."""
    def found() -> Path | None:
        trees = sorted(glob.glob(TREES))
        return next((Path(t) for t in trees if os.path.exists(f"{t}/usr/sbin/update-initramfs")), None)

    if (tree := found()) is None:
        root = tmp_path_factory.mktemp("debian-build") / "root"
        argv = [str(VIRTKIT), "--root", str(root), "image", "build", "debian", "--flavour", "vm"]
        built = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        assert built.returncode == 0, built.stderr
        tree = found()
        assert tree is not None, "the Debian build left no cached tree with initramfs-tools"
    return tree


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tree = debian_tree(tmp_path_factory)
    work = tmp_path_factory.mktemp("guest")
    canary = work / "canary"
    canary.write_text('GRUB_CMDLINE_LINUX="root=/dev/sda1"\n')
    os.environ["VK_CANARY"] = str(canary)
    raw = work / "disk.raw"
    with raw.open("wb") as out:
        out.truncate(2048 * MiB)
    subprocess.run(["sfdisk", "-q", str(raw)], input="start=2048, type=83, bootable\n", text=True, check=True)
    _sh("mkfs.ext4", "-q", "-F", "-E", f"offset={MiB}", "-d", str(tree), str(raw), "2000M")
    _in_fs(raw, _emulated)
    qcow = work / "disk.qcow2"
    _sh("qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow))
    raw.unlink()
    yield qcow
    qcow.unlink()  # 800 MB: not left in the base temp


@pytest.fixture
def vm(tmp_path: Path, disk: Path) -> Iterator[tuple[Path, SqliteStore]]:
    root = tmp_path / "root"
    store = open_store(root)
    (root / "instances/g1").mkdir(parents=True)
    # an overlay on the module's disk: each test's changes are its own, and cost no copy of the disk
    _sh(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        str(disk),
        "-F",
        "qcow2",
        str(root / "instances/g1/root.qcow2"),
    )
    nic = Nic(network="default", mac=MAC, ip="10.7.0.2", device="vk0123abcdn0", model="e1000")
    store.create(
        InstanceRecord(
            name="g1", kind=InstanceKind.VM, config={"devices": "emulated", "machine": "q35"}, nics=[nic]
        )
    )
    yield root, store
    store.close()


def _boot(qcow: Path, tmp: Path) -> str:
    """Boot the disk's own kernel and initrd on a virtio disk (TCG) until a login or a failed root."""
    overlay = tmp / "boot.qcow2"
    _sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(qcow), "-F", "qcow2", str(overlay))
    with guestdisk.exported(overlay) as raw, guestdisk.attached(raw) as parts:
        uuid = parts[0].uuid
        point = tmp / "bootmnt"
        point.mkdir(exist_ok=True)

        def copy() -> None:
            guestdisk.mount(parts[0].loop, point, "ext4", "ro")
            try:
                (tmp / "vmlinuz").write_bytes(next(point.glob("boot/vmlinuz-*")).read_bytes())
                (tmp / "initrd").write_bytes(next(point.glob("boot/initrd.img-*")).read_bytes())
            finally:
                guestdisk.unmount_all(point)

        guestdisk.in_private_namespace(copy)
    argv = [
        "qemu-system-x86_64",
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-kernel",
        str(tmp / "vmlinuz"),
        "-initrd",
        str(tmp / "initrd"),
        "-append",
        # no rootdelay=: initramfs-tools would sleep that long before even looking, then wait its own
        # max(30 s, rootdelay) for the root device; its 30 s floor is wait enough for a virtio disk
        f"root=UUID={uuid} ro console=ttyS0 panic=-1",
        "-drive",
        f"file={overlay},if=virtio,format=qcow2",
    ]
    log = tmp / "boot.log"
    with log.open("wb") as out:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline and qemu.poll() is None:
            text = log.read_text(errors="replace")
            if "login:" in text or "Gave up waiting" in text:
                break
            time.sleep(0.5)
    finally:
        qemu.kill()
        qemu.wait()
    overlay.unlink()
    return log.read_text(errors="replace")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_back(qcow: Path, tmp: Path) -> dict[str, str]:
    raw = tmp / "back.raw"
    _sh("qemu-img", "convert", "-O", "raw", str(qcow), str(raw))

    def look(guest: Path) -> dict[str, str]:
        release = next(p.name for p in (guest / "lib/modules").iterdir())
        for name in ("proc", "sys", "dev"):
            guestdisk.bind(f"/{name}", guest / name)
        listing = subprocess.run(
            ["chroot", str(guest), "lsinitramfs", f"/boot/initrd.img-{release}"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert listing.returncode == 0, listing.stderr
        listing = listing.stdout
        return {
            "fstab": (guest / "etc/fstab").read_text(),
            "extlinux": (guest / "boot/extlinux/extlinux.conf").read_text(),
            "modules": (guest / "etc/initramfs-tools/modules").read_text(),
            "interfaces": (guest / "etc/network/interfaces").read_text(),
            "link": (guest / "etc/systemd/network/70-virtkit-eth0.link").read_text(),
            "rules": str((guest / "etc/udev/rules.d/70-persistent-net.rules").exists()),
            "initrd": "\n".join(x for x in listing.splitlines() if "virtio" in x),
        }

    found = _in_fs(raw, look)
    raw.unlink()
    assert isinstance(found, dict)
    return found


def test_dry_run_changes_nothing(vm: tuple[Path, SqliteStore]) -> None:
    root, store = vm
    qcow = root / "instances/g1/root.qcow2"
    before = _digest(qcow)
    result = convert(root, store, "g1", dry_run=True)
    assert any(c.startswith("/etc/fstab: /dev/sda1 -> UUID=") for c in result.changes)
    assert "/etc/initramfs-tools/modules: + virtio_blk" in result.changes
    assert "VM devices: emulated (AHCI, e1000) -> virtio" in result.changes
    assert _digest(qcow) == before
    assert store.get(InstanceRecord, "g1").config["devices"] == "emulated"
    assert not list(qcow.parent.glob(".convert-*"))


def test_convert_for_real(vm: tuple[Path, SqliteStore], tmp_path: Path) -> None:
    root, store = vm
    before = _boot(root / "instances/g1/root.qcow2", tmp_path)
    assert "Gave up waiting for root" in before and "login:" not in before  # no virtio: no root
    result = convert(root, store, "g1")
    print(f"conversion of g1: {result.seconds:.1f} s")
    uuid = next(c for c in result.changes if c.startswith("/etc/fstab: /dev/sda1")).rsplit("UUID=", 1)[1]
    assert "initramfs regenerated (update-initramfs -u -k all)" in result.changes
    assert "removed /etc/udev/rules.d/70-persistent-net.rules" in result.changes
    assert "/etc/network/interfaces: interface ens33 -> eth0" in result.changes
    assert (result.devices_before, result.devices_after) == ("emulated", "virtio")
    record = store.get(InstanceRecord, "g1")
    assert record.config["devices"] == "virtio" and record.nics[0].model is None
    back = _read_back(root / "instances/g1/root.qcow2", tmp_path)
    assert back["fstab"].startswith(f"UUID={uuid} / ext4")
    assert "/dev/sdb1 /srv" in back["fstab"]  # another disk's: not this one's UUID to give
    assert f"root=UUID={uuid} ro" in back["extlinux"]
    assert "virtio_blk" in back["modules"].split() and "virtio_net" in back["modules"].split()
    assert "auto eth0" in back["interfaces"] and "ens33" not in back["interfaces"]
    assert f"MACAddress={MAC}" in back["link"] and back["rules"] == "False"
    assert "virtio_blk.ko" in back["initrd"] and "virtio_net.ko" in back["initrd"]
    after = _boot(root / "instances/g1/root.qcow2", tmp_path)
    assert "login:" in after, after[-2000:]  # on virtio now
    # the link to the host's file was resolved inside the guest: the host's file is untouched
    assert "root=/dev/sda1" in Path(os.environ["VK_CANARY"]).read_text()
    again = convert(root, store, "g1")  # converted already: nothing more to add, devices stay
    assert not any(c.startswith("/etc/fstab") or "+ virtio" in c for c in again.changes)


def test_refusals(vm: tuple[Path, SqliteStore]) -> None:
    root, store = vm
    with pytest.raises(NotFoundError):
        convert(root, store, "nope")
    for hostile in ("../g1", "g1/../../etc", "", "a" * 300, "-rf"):
        with pytest.raises((SpecError, NotFoundError, ValueError)):
            convert(root, store, hostile)
    record = store.get(InstanceRecord, "g1")
    record.state = InstanceState.RUNNING
    store.put(record)
    with pytest.raises(StateError, match="stop it first"):
        convert(root, store, "g1")
    store.create(InstanceRecord(name="c1", kind=InstanceKind.CONTAINER))
    with pytest.raises(RejectedError, match="container"):
        convert(root, store, "c1")


def test_no_linux_guest_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = open_store(root)
    (root / "instances/w1").mkdir(parents=True)
    raw = tmp_path / "w.raw"
    with raw.open("wb") as out:
        out.truncate(64 * MiB)
    _sh("mkfs.ext4", "-q", "-F", str(raw))
    qcow = root / "instances/w1/root.qcow2"
    _sh("qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow))
    store.create(InstanceRecord(name="w1", kind=InstanceKind.VM, config={"devices": "emulated"}))
    before = _digest(qcow)
    with pytest.raises(RejectedError, match="no Linux root"):
        convert(root, store, "w1")
    assert _digest(qcow) == before and not list(qcow.parent.glob(".convert-*"))
    assert store.get(InstanceRecord, "w1").config["devices"] == "emulated"
    assert not [x for x in _sh("losetup", "-a").splitlines() if str(tmp_path) in x]
    store.close()


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VIRTKIT), "--root", str(root), *args], capture_output=True, text=True, timeout=900
    )


def test_cli(vm: tuple[Path, SqliteStore]) -> None:
    root, _store = vm
    done = _cli(root, "convert", "--json", "--dry-run", "g1")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["dry_run"] is True and found["devices_after"] == "virtio"
    assert "/etc/initramfs-tools/modules: + virtio_blk" in found["changes"]
    assert "not found" in _cli(root, "convert", "nope").stderr
    for hostile in ("../g1", "g1;rm", "A" * 100, "--", ""):
        done = _cli(root, "convert", hostile)
        assert done.returncode != 0 and "Traceback" not in done.stderr
