"""Configuring a Debian tree: file contents, unit enabling and masking, identity removal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.images import debiantree
from virtkit.images.debiantree import (
    CONTAINER,
    VM,
    apt_sources,
    cloud_config,
    config_files,
    configure_tree,
    enable_unit,
    install_section,
    lock_root,
    mask_unit,
)

NETWORKD = """\
[Unit]
Description=Network Configuration

[Service]
ExecStart=!!/lib/systemd/systemd-networkd

[Install]
WantedBy=multi-user.target
Also=systemd-networkd.socket
Alias=dbus-org.freedesktop.network1.service
# comment
Also=systemd-networkd-wait-online.service
"""
UNITS = {
    "systemd-networkd.service": NETWORKD,
    "systemd-networkd.socket": "[Socket]\nListenNetlink=route 1361\n[Install]\nWantedBy=sockets.target\n",
    "systemd-networkd-wait-online.service": "[Install]\nWantedBy=network-online.target\n",
    "systemd-resolved.service": (
        "[Install]\nWantedBy=sysinit.target\nAlias=dbus-org.freedesktop.resolve1.service\n"
    ),
    "systemd-udevd.service": "[Service]\n",
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    for name, text in UNITS.items():
        (units / name).write_text(text)
    etc = root / "etc"
    (etc / "ssh").mkdir(parents=True)
    for key in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
        (etc / "ssh" / key).write_text("secret")
    (etc / "ssh/sshd_config").write_text("# config\n")
    (etc / "shadow").write_text("root:$y$j9T$abc:20000:0:99999:7:::\nnobody:*:20000:0:99999:7:::\n")
    (etc / "machine-id").write_text("67906b119b5943fd819b0d1fe246509a\n")
    (etc / "hostname").write_text("buildhost\n")
    (etc / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    (root / "var/lib/dbus").mkdir(parents=True)
    (root / "var/lib/dbus/machine-id").write_text("67906b119b5943fd819b0d1fe246509a\n")
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    (root / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease").write_text("x")
    (root / "var/lib/apt/lists/lock").write_text("")
    (root / "var/cache/apt/archives").mkdir(parents=True)
    (root / "var/cache/apt/pkgcache.bin").write_text("x")
    (root / "var/cache/apt/archives/bash_5.2_amd64.deb").write_text("x")
    (root / "var/log/apt").mkdir(parents=True)
    (root / "dev/pts").mkdir(parents=True)
    (root / "dev/fd").symlink_to("/proc/self/fd")
    (root / "dev/console").write_text("")
    (root / "var/log/dpkg.log").write_text("installed things\n")
    (root / "var/log/apt/history.log").write_text("installed things\n")
    return root


def test_install_section_reads_only_install_keys() -> None:
    assert install_section(NETWORKD) == {
        "WantedBy": ["multi-user.target"],
        "Also": ["systemd-networkd.socket", "systemd-networkd-wait-online.service"],
        "Alias": ["dbus-org.freedesktop.network1.service"],
    }
    assert install_section("[Service]\nWantedBy=nothing.target\n") == {}


def test_enable_unit_makes_the_links_systemctl_would(tree: Path) -> None:
    enable_unit(tree, "systemd-networkd.service")
    etc = tree / "etc/systemd/system"
    assert os.readlink(etc / "multi-user.target.wants/systemd-networkd.service") == (
        "/lib/systemd/system/systemd-networkd.service"
    )
    assert os.readlink(etc / "dbus-org.freedesktop.network1.service").endswith("/systemd-networkd.service")
    assert (etc / "sockets.target.wants/systemd-networkd.socket").is_symlink()
    assert (etc / "network-online.target.wants/systemd-networkd-wait-online.service").is_symlink()
    enable_unit(tree, "no-such.service")  # not installed: nothing, no error


def test_mask_unit_points_at_dev_null(tree: Path) -> None:
    mask_unit(tree, "systemd-udevd.service")
    mask_unit(tree, "systemd-udevd.service")
    assert os.readlink(tree / "etc/systemd/system/systemd-udevd.service") == "/dev/null"


def test_lock_root() -> None:
    assert lock_root("root:$6$hash:1::::::\n").startswith("root:!$6$hash:")
    assert lock_root("root::1::::::\n").startswith("root:*:")
    assert lock_root("root:*:1::::::\nuser:$6$x:1::::::\n") == "root:*:1::::::\nuser:$6$x:1::::::\n"


def test_network_file_matches_ethernet_and_uses_dhcp() -> None:
    text = config_files(VM)["etc/systemd/network/80-virtkit-dhcp.network"]
    assert "Name=en* eth*" in text and "DHCP=yes" in text


def test_cloud_init_reads_nocloud_and_keeps_apt_sources() -> None:
    text = cloud_config()
    assert "datasource_list: [NoCloud, None]" in text
    assert "preserve_sources_list: true" in text
    assert "locale: false" in text and "dsa" not in text.replace("ecdsa", "")


def test_cloud_init_keeps_the_boot_short_and_the_hostname_resolvable() -> None:
    text = cloud_config()
    # RSA host keys take seconds under TCG: ssh.service's `ssh-keygen -A` makes them off the path
    # to qemu-guest-agent (which waits for cloud-init's init stage).
    assert "ssh_genkeytypes: [ed25519]\n" in text
    assert "manage_etc_hosts: localhost\n" in text
    assert "grub_dpkg:\n  enabled: false\n" in text  # no bootloader in the image


def test_cloud_init_grows_the_bare_root_filesystem_and_leaves_partitions_alone() -> None:
    text = cloud_config()
    # The root disk has no partition table (debiandisk): resizefs grows the filesystem itself, at
    # every boot and before the boot goes on (true, not cloud-init's "noblock"); growpart has
    # nothing to do ("off" quoted: YAML would read a bare off as false).
    assert "\nresize_rootfs: true\n" in text
    assert '\ngrowpart:\n  mode: "off"\n' in text


def test_no_waiting_for_a_network_without_ethernet() -> None:
    text = config_files(VM)["etc/systemd/system/systemd-networkd-wait-online.service.d/virtkit.conf"]
    assert text.startswith("[Unit]\nConditionPathExistsGlob=/sys/class/net/e*\n")
    assert "--any --timeout=30" in text


def test_fstab_mounts_the_labelled_root_only_for_vms() -> None:
    assert "LABEL=virtkit-root\t/\text4" in config_files(VM)["etc/fstab"]
    assert "LABEL" not in config_files(CONTAINER)["etc/fstab"]


def test_ssh_host_keys_are_made_before_sshd_checks_its_config() -> None:
    text = config_files(CONTAINER)["etc/systemd/system/ssh.service.d/virtkit-host-keys.conf"]
    lines = text.splitlines()
    assert lines.index("ExecStartPre=") < lines.index("ExecStartPre=/usr/bin/ssh-keygen -A")
    assert lines.index("ExecStartPre=/usr/bin/ssh-keygen -A") < lines.index("ExecStartPre=/usr/sbin/sshd -t")


def test_apt_sources() -> None:
    text = apt_sources("bookworm", "http://m/debian", "http://m/debian-security")
    assert "Suites: bookworm bookworm-updates\n" in text and "Suites: bookworm-security\n" in text
    assert "debian-security" not in apt_sources("sid", "http://m/debian", "http://m/debian-security")


def test_configure_vm(tree: Path) -> None:
    configure_tree(tree, flavour=VM)
    assert (tree / "etc/hostname").read_text() == "debian\n"
    assert "127.0.1.1\tdebian" in (tree / "etc/hosts").read_text()
    assert (tree / "etc/machine-id").read_text() == ""
    assert sorted(p.name for p in (tree / "dev").iterdir()) == ["console", "fd", "pts"]
    assert not (tree / "var/lib/dbus/machine-id").exists()
    assert not list((tree / "etc/ssh").glob("ssh_host_*"))
    assert (tree / "etc/ssh/sshd_config").exists()
    assert (tree / "etc/shadow").read_text().startswith("root:!$y$")
    assert (tree / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").is_symlink()
    assert (tree / "etc/systemd/system/sysinit.target.wants/systemd-resolved.service").is_symlink()
    assert os.readlink(tree / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert (tree / "etc/systemd/system/systemd-networkd-wait-online.service.d/virtkit.conf").is_file()
    assert [p.name for p in (tree / "var/lib/apt/lists").iterdir()] != []
    assert sorted(p.name for p in (tree / "var/lib/apt/lists").iterdir()) == ["lock", "partial"]
    assert not list((tree / "var/cache/apt").rglob("*.bin"))
    assert not list((tree / "var/cache/apt").rglob("*.deb"))
    assert (tree / "var/log/dpkg.log").read_text() == ""
    assert (tree / "var/log/apt/history.log").read_text() == ""
    assert not (tree / "etc/systemd/system/systemd-udevd.service").exists()


def test_configure_container_masks_what_makes_no_sense_there(tree: Path) -> None:
    configure_tree(tree, flavour=CONTAINER)
    for unit in debiantree.CONTAINER_MASKS:
        assert os.readlink(tree / "etc/systemd/system" / unit) == "/dev/null"
    assert "LABEL" not in (tree / "etc/fstab").read_text()
    assert list((tree / "dev").iterdir()) == []
    assert not (tree / "etc/systemd/system/systemd-networkd-wait-online.service.d").exists()
    assert (tree / "etc/machine-id").read_text() == ""


def test_a_container_keeps_its_runtimes_hostname_and_says_when_it_booted(tree: Path) -> None:
    configure_tree(tree, flavour=CONTAINER)
    assert not (tree / "etc/hostname").exists()  # systemd leaves the hostname runc set alone
    assert "debian" not in (tree / "etc/hosts").read_text()  # systemd-resolved answers for it
    assert (tree / "etc/cloud/cloud-init.disabled").is_file()  # no seed, no cloud-init
    wants = tree / "etc/systemd/system/multi-user.target.wants" / debiantree.READY_UNIT
    assert os.readlink(wants) == f"/etc/systemd/system/{debiantree.READY_UNIT}"
    unit = (tree / "etc/systemd/system" / debiantree.READY_UNIT).read_text()
    assert unit == debiantree.ready_unit()
    assert "Type=simple\n" in unit and "StandardOutput=journal+console\n" in unit
    # `$$` is systemd's literal `$`: the shell sees $(systemctl is-system-running --wait).
    assert 'echo "VIRTKIT-READY $$(systemctl is-system-running --wait)"' in unit
    assert debiantree.READY_MARKER not in unit.split("Description=")[1].splitlines()[0]


def test_a_vm_keeps_its_name_and_cloud_init() -> None:
    files = config_files(VM)
    assert files["etc/hostname"] == "debian\n"
    assert "etc/cloud/cloud-init.disabled" not in files and debiantree.READY_UNIT not in str(files)
