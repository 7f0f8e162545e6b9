"""The guest edits of ops/convert.py on a plain directory standing for a mounted guest (no disk, no
chroot: the dry or file-only steps), and the record switch on the real SQLite store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.errors import RejectedError, StateError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, Nic
from virtkit.ops import convert as cv
from virtkit.storage.guestdisk import Part
from virtkit.store import SqliteStore

PARTS = [Part(1, "/dev/loop9", "1111-aaaa", "ext4"), Part(2, "/dev/loop10", "", "swap")]


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    g = tmp_path / "guest"
    for d in (
        "etc/default",
        "boot/grub",
        "etc/network",
        "etc/netplan",
        "etc/systemd/system",
        "lib/systemd/system",
        "etc/initramfs-tools",
        "usr/sbin",
        "var/lib/dpkg",
    ):
        (g / d).mkdir(parents=True)
    (g / "etc/fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n/dev/hda2 none swap sw 0 0\n# /dev/sda1\n")
    (g / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX="root=/dev/xvda1 quiet"\n')
    (g / "boot/grub/grub.cfg").write_text(
        "linux /vmlinuz root=/dev/sda1 ro\nlinux /vmlinuz root=/dev/sda12\n"
    )
    (g / "etc/netplan/50.yaml").write_text("network:\n  ethernets:\n    enp0s3:\n      dhcp4: true\n")
    (g / "lib/systemd/system/qemu-guest-agent.service").write_text("[Unit]\n")
    (g / "usr/sbin/update-initramfs").write_text("")
    (g / "etc/initramfs-tools/modules").write_text("# list\nvirtio_pci")
    (g / "var/lib/dpkg/status").write_text(
        "Package: open-vm-tools\nStatus: install ok installed\n\nPackage: virtualbox-guest-utils\n"
        "Status: deinstall ok config-files\n\nPackage: bash\nStatus: install ok installed\n"
    )
    return g


def test_devices_become_uuids(guest: Path) -> None:
    changes = cv._rewrite_devices(guest, PARTS, dry=False)
    assert "/etc/fstab: /dev/sda1 -> UUID=1111-aaaa" in changes
    assert "/etc/default/grub: /dev/xvda1 -> UUID=1111-aaaa" in changes
    fstab = (guest / "etc/fstab").read_text()
    assert fstab.startswith("UUID=1111-aaaa / ext4") and "/dev/hda2 none swap" in fstab  # no UUID: kept
    grub = (guest / "boot/grub/grub.cfg").read_text()
    assert "root=UUID=1111-aaaa ro" in grub and "root=/dev/sda12" in grub  # no partition 12: kept


def test_dry_run_writes_nothing(guest: Path) -> None:
    before = {p: p.read_bytes() for p in guest.rglob("*") if p.is_file()}
    changes = (
        cv._rewrite_devices(guest, PARTS, dry=True)
        + cv._network(guest, ["52:54:00:00:00:01"], dry=True)
        + cv._guest_agent(guest, dry=True)
        + cv._remove_tools(guest, True, [])
        + cv._initramfs(guest, True, [])
    )
    assert "removed the guest tools package open-vm-tools (dpkg --purge)" in changes
    assert not any("virtualbox" in c for c in changes)  # only its config is left: not installed
    assert "/etc/initramfs-tools/modules: + virtio_blk" in changes
    assert "/etc/initramfs-tools/modules: + virtio_pci" not in changes
    assert {p: p.read_bytes() for p in guest.rglob("*") if p.is_file()} == before
    assert not (guest / "etc/systemd/system/multi-user.target.wants").exists()


def test_network_names_by_mac(guest: Path) -> None:
    (guest / "etc/network/interfaces").write_text("auto ens33\niface ens33 inet dhcp\n")
    changes = cv._network(guest, ["52:54:00:00:00:01"], dry=False)
    assert "/etc/network/interfaces: interface ens33 -> eth0" in changes
    assert "ens33" not in (guest / "etc/network/interfaces").read_text()
    assert "eth0" not in (guest / "etc/netplan/50.yaml").read_text()  # one NIC: the second name is kept
    link = (guest / "etc/systemd/network/70-virtkit-eth0.link").read_text()
    assert "MACAddress=52:54:00:00:00:01" in link and "Name=eth0" in link


def test_guest_agent_enabled(guest: Path) -> None:
    assert cv._guest_agent(guest, dry=False)
    link = guest / "etc/systemd/system/multi-user.target.wants/qemu-guest-agent.service"
    assert os.readlink(link) == "/lib/systemd/system/qemu-guest-agent.service"
    assert cv._guest_agent(guest, dry=False) == []  # enabled already


def test_links_out_of_the_guest_stay_inside(guest: Path, tmp_path: Path) -> None:
    host = tmp_path / "host-fstab"
    host.write_text("/dev/sda1 / ext4 defaults 0 1\n")
    (guest / "etc/fstab").unlink()
    os.symlink(f"../../../../../../..{host}", guest / "etc/fstab")
    (guest / "etc/default/grub").unlink()
    os.symlink(str(host), guest / "etc/default/grub")
    cv._rewrite_devices(guest, PARTS, dry=False)
    assert host.read_text() == "/dev/sda1 / ext4 defaults 0 1\n"
    (guest / "etc/network/interfaces").symlink_to(host)  # absolute: restarts at the guest's root
    cv._network(guest, ["52:54:00:00:00:01"], dry=False)
    assert host.read_text() == "/dev/sda1 / ext4 defaults 0 1\n"


def test_huge_file_refused(guest: Path) -> None:
    (guest / "etc/fstab").write_bytes(b"#" * (cv.MAX_FILE + 10))
    with pytest.raises(RejectedError, match="larger"):
        cv._rewrite_devices(guest, PARTS, dry=True)


def test_dracut_guest(guest: Path) -> None:
    (guest / "usr/sbin/update-initramfs").unlink()
    (guest / "usr/bin").mkdir(parents=True)
    (guest / "usr/bin/dracut").write_text("")
    changes = cv._initramfs(guest, True, [])
    assert changes[0].startswith("/etc/dracut.conf.d/virtkit-virtio.conf: add_drivers+= virtio_pci")
    (guest / "usr/bin/dracut").unlink()
    notes: list[str] = []
    assert cv._initramfs(guest, True, notes) == [] and "neither" in notes[0]


def _vm(store: SqliteStore, image: str | None = None) -> InstanceRecord:
    nic = Nic(network="default", mac="52:54:00:00:00:01", ip="10.7.0.2", device="vk0123abcdn0", model="e1000")
    return store.create(
        InstanceRecord(
            name="g1", kind=InstanceKind.VM, image=image, config={"devices": "emulated"}, nics=[nic]
        )
    )


def test_switch_to_virtio(store: SqliteStore) -> None:
    record = _vm(store)
    result = cv.Conversion("g1", devices_before=cv._devices(record))
    cv._switch(store, record, result)
    stored = store.get(InstanceRecord, "g1")
    assert stored.config["devices"] == "virtio" and stored.nics[0].model is None
    assert (
        result.devices_after == "virtio" and "VM devices: emulated (AHCI, e1000) -> virtio" in result.changes
    )


def test_direct_boot_is_refused_before_anything(store: SqliteStore, tmp_path: Path) -> None:
    fingerprint = "a" * 64
    store.create(
        ImageRecord(
            fingerprint=fingerprint,
            name="p2v",
            format="qcow2",
            files={"kernel": "vmlinuz", "initrd": "initrd.img", "disk": "disk.qcow2"},
        )
    )
    _vm(store, image=fingerprint)
    with pytest.raises(StateError, match="direct boot") as refused:
        cv.convert(tmp_path, store, "g1")
    assert "keeps emulated devices" in str(refused.value.hint)
    assert store.get(InstanceRecord, "g1").config["devices"] == "emulated"
