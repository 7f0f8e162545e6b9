"""Configuring a debootstrapped Debian tree as a virtkit image, by writing files (no chroot).

The file contents are pure functions (unit-tested); `configure_tree` writes them and enables or
masks systemd units with the symlinks `systemctl enable/mask` would make, read from the units'
own [Install] sections, so no systemd needs to run on the build host.

What every instance of the image then gets at first boot: a fresh machine-id (the file is left
empty), fresh SSH host keys (generated before sshd starts), DHCP on every en*/eth* interface by
systemd-networkd, a locked root password, cloud-init reading a NoCloud seed when one is attached
(and growing the root filesystem to fill a bigger disk, `launch --disk`), and qemu-guest-agent
started by udev when the org.qemu.guest_agent.0 port appears (Debian's unit is bound to that device).

A container's systemd (PID 1, halted by SIGRTMIN+3) runs without the units that need hardware,
a kernel of its own or CAP_SYS_ADMIN (`CONTAINER_MASKS`; the rest skip themselves on their
Condition*= lines), keeps the hostname the runtime gave it (no /etc/hostname), has cloud-init
turned off, and says on its console when its boot is over (`ready_unit`).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

HOSTNAME = "debian"
ROOT_LABEL = "virtkit-root"
VM = "vm"
CONTAINER = "container"

# Units that make no sense in a container: no devices to manage, no NIC to wait for, no console
# on ttyS0, no filesystem of its own to scrub. No login prompt on the container's console either:
# nobody could log in there (root is locked: `virtkit exec` is the way in), and agetty flushes
# the console when it opens it, at the very end of the boot (Type=idle), which lost the readiness
# line in one boot of six. The others that cannot work in a container skip themselves
# (ConditionVirtualization=!container, ConditionCapability=CAP_SYS_MODULE or CAP_NET_ADMIN,
# ConditionPathIsReadWrite=/proc/sys): inactive, never failed.
CONTAINER_MASKS = (
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-networkd-wait-online.service",
    "serial-getty@ttyS0.service",
    "console-getty.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
)
READY_MARKER = "VIRTKIT-READY"  # what a container prints on its console once its boot is over
READY_UNIT = "virtkit-ready.service"
_UNIT_DIRS = ("lib/systemd/system", "usr/lib/systemd/system")


def hosts_file(hostname: str = HOSTNAME) -> str:
    return (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{hostname}\n"
        "\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\t\tip6-allnodes\n"
        "ff02::2\t\tip6-allrouters\n"
    )


def hosts_for(flavour: str) -> str:
    """A container's name is the runtime's, not `debian`: systemd-resolved (the stub in
    /etc/resolv.conf) answers for whatever it is."""
    text = hosts_file()
    return text.replace(f"127.0.1.1\t{HOSTNAME}\n", "") if flavour == CONTAINER else text


def ready_unit() -> str:
    """A container's readiness, for virtkit's wait_ready: one line on the console once systemd's
    boot is over (`is-system-running --wait`: no job left; it then says running, or degraded if a
    unit failed). Type=simple, so its own start job is done at once and does not keep the boot
    from ending. `$$` is a literal `$` for systemd."""
    return (
        "[Unit]\n"
        "Description=Tell virtkit the boot is over\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart=/bin/sh -c 'echo \"{READY_MARKER} $$(systemctl is-system-running --wait)\"'\n"
        "StandardOutput=journal+console\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def cloud_init_disabled() -> str:
    """cloud-init stays off in a container (its generator skips it while this file exists): with
    no DMI and no disk to probe, ds-identify takes the one datasource listed without looking for
    a seed, so every boot would spend seconds in cloud-init for nothing. virtkit gives containers
    no NoCloud seed yet; when it does, it removes this file from the container's own layer."""
    return "# virtkit: no cloud-init in a container without a NoCloud seed\n"


def fstab(flavour: str) -> str:
    if flavour == CONTAINER:
        return "# virtkit container: the runtime provides the root filesystem and mounts\n"
    return (
        "# virtkit VM: the root disk is a bare ext4 filesystem (no partition table) labelled "
        f"{ROOT_LABEL}\n"
        f"LABEL={ROOT_LABEL}\t/\text4\tdefaults,errors=remount-ro\t0\t1\n"
    )


def network_file() -> str:
    """systemd-networkd: DHCP on every Ethernet NIC (a cloud-init network-config, if given, wins:
    its 10-cloud-init-*.network files sort first)."""
    return (
        "# virtkit: DHCP (v4 and v6) on every Ethernet interface\n"
        "[Match]\n"
        "Name=en* eth*\n"
        "\n"
        "[Network]\n"
        "DHCP=yes\n"
    )


def wait_online_dropin() -> str:
    """Waiting for the network: one interface is enough, and not for two minutes; with no Ethernet
    interface at all, not at all (it would wait out its timeout, and cloud-init, hence the whole
    boot, waits for it)."""
    return (
        "[Unit]\n"
        "ConditionPathExistsGlob=/sys/class/net/e*\n"
        "\n"
        "[Service]\n"
        "ExecStart=\n"
        "ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30\n"
    )


def ssh_host_keys_dropin() -> str:
    """The image ships no SSH host keys: each instance makes its own before sshd starts
    (`ssh-keygen -A` makes only the missing ones, so keys cloud-init wrote are kept)."""
    return (
        "[Service]\n"
        "ExecStartPre=\n"
        "ExecStartPre=/usr/bin/ssh-keygen -A\n"
        "ExecStartPre=/usr/sbin/sshd -t\n"
    )


def cloud_config() -> str:
    return (
        "# virtkit: instance data comes from a NoCloud seed (a disk labelled cidata, or\n"
        "# /var/lib/cloud/seed/nocloud); without one cloud-init stays out of the way.\n"
        "datasource_list: [NoCloud, None]\n"
        "# only C.UTF-8 exists (no locales package): leave the locale alone unless user-data sets one\n"
        "locale: false\n"
        "# only ed25519 while the boot waits (RSA takes seconds under emulation): ssh.service makes\n"
        "# the other host keys OpenSSH accepts (ssh-keygen -A) before sshd starts\n"
        "ssh_genkeytypes: [ed25519]\n"
        "# keep the hostname cloud-init sets resolvable (/etc/hosts names 127.0.1.1 after it)\n"
        "manage_etc_hosts: localhost\n"
        "# the root disk is a bare ext4 filesystem (no partition table): nothing for growpart;\n"
        "# resizefs grows the filesystem to fill a bigger disk (launch --disk) at every boot,\n"
        "# before the boot goes on (resize2fs online: well under a second)\n"
        "growpart:\n"
        "  mode: \"off\"\n"
        "resize_rootfs: true\n"
        "# the image has no bootloader (virtkit boots its kernel directly)\n"
        "grub_dpkg:\n"
        "  enabled: false\n"
        "# the image's apt sources are already right; do not rewrite them at first boot\n"
        "apt:\n"
        "  preserve_sources_list: true\n"
    )


def apt_sources(release: str, mirror: str, security_mirror: str) -> str:
    """deb822 sources: the release, its updates and its security archive (sid has neither)."""
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    suites = release if release == "sid" else f"{release} {release}-updates"
    text = f"Types: deb\nURIs: {mirror}\nSuites: {suites}\nComponents: main\nSigned-By: {keyring}\n"
    if release != "sid":
        text += (
            f"\nTypes: deb\nURIs: {security_mirror}\nSuites: {release}-security\n"
            f"Components: main\nSigned-By: {keyring}\n"
        )
    return text


def lock_root(shadow: str) -> str:
    """/etc/shadow with root's password locked ('*' when it had none, '!' prefixed otherwise)."""
    lines = []
    for line in shadow.splitlines():
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1 and not fields[1].startswith(("!", "*")):
            fields[1] = "!" + fields[1] if fields[1] else "*"
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"


def config_files(flavour: str) -> dict[str, str]:
    """The files (path relative to the tree → content) written into every image of `flavour`."""
    files = {
        "etc/hosts": hosts_for(flavour),
        "etc/fstab": fstab(flavour),
        "etc/systemd/network/80-virtkit-dhcp.network": network_file(),
        "etc/systemd/system/ssh.service.d/virtkit-host-keys.conf": ssh_host_keys_dropin(),
        "etc/cloud/cloud.cfg.d/90-virtkit.cfg": cloud_config(),
    }
    if flavour == VM:
        files["etc/hostname"] = HOSTNAME + "\n"
        files["etc/systemd/system/systemd-networkd-wait-online.service.d/virtkit.conf"] = wait_online_dropin()
    else:
        files["etc/cloud/cloud-init.disabled"] = cloud_init_disabled()
        files[f"etc/systemd/system/{READY_UNIT}"] = ready_unit()
    return files


def install_section(unit_text: str) -> dict[str, list[str]]:
    """The [Install] section of a unit file: key → the names it lists (pure)."""
    section = ""
    found: dict[str, list[str]] = {}
    for raw in unit_text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Install" and "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).extend(value.split())
    return found


def _unit_path(tree: Path, unit: str) -> str | None:
    for base in _UNIT_DIRS:
        if (tree / base / unit).is_file():
            return f"/{base}/{unit}"
    return None


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def enable_unit(tree: Path, unit: str, _seen: set[str] | None = None) -> None:
    """Make the links `systemctl enable unit` would make (WantedBy, RequiredBy, Alias, Also)."""
    seen = _seen if _seen is not None else set()
    if unit in seen:
        return
    seen.add(unit)
    source = _unit_path(tree, unit)
    if source is None:
        log.debug("unit %s is not installed; not enabling it", unit)
        return
    etc = tree / "etc/systemd/system"
    install = install_section((tree / source.lstrip("/")).read_text())
    for key, suffix in (("WantedBy", ".wants"), ("RequiredBy", ".requires")):
        for target in install.get(key, []):
            _link(etc / (target + suffix) / unit, source)
    for alias in install.get("Alias", []):
        _link(etc / alias, source)
    for also in install.get("Also", []):
        enable_unit(tree, also, seen)


def mask_unit(tree: Path, unit: str) -> None:
    _link(tree / "etc/systemd/system" / unit, "/dev/null")


def configure_tree(tree: Path, *, flavour: str) -> None:
    """Turn a debootstrapped tree into a virtkit image of `flavour` (VM or CONTAINER), in place."""
    for relative, content in config_files(flavour).items():
        path = tree / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o644)
    shadow = tree / "etc/shadow"
    shadow.write_text(lock_root(shadow.read_text()))
    enable_unit(tree, "systemd-networkd.service")
    if _unit_path(tree, "systemd-resolved.service"):
        enable_unit(tree, "systemd-resolved.service")
        _link(tree / "etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf")
    if flavour == CONTAINER:
        for unit in CONTAINER_MASKS:
            mask_unit(tree, unit)
        wants = tree / "etc/systemd/system/multi-user.target.wants"
        _link(wants / READY_UNIT, f"/etc/systemd/system/{READY_UNIT}")
        (tree / "etc/hostname").unlink(missing_ok=True)  # keep the runtime's (systemd cannot set one)
        _empty_dev(tree / "dev")
    clean_tree(tree)


def _empty_dev(dev: Path) -> None:
    """A container's /dev is the runtime's (a tmpfs): the image ships none of debootstrap's nodes."""
    for entry in dev.iterdir() if dev.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def clean_tree(tree: Path) -> None:
    """Remove what must not be shared between instances (identity, keys) or is only bulk."""
    (tree / "etc/machine-id").write_text("")
    for path in [
        tree / "var/lib/dbus/machine-id",
        tree / "var/lib/systemd/random-seed",
        *(tree / "etc/ssh").glob("ssh_host_*"),
        *(tree / "var/cache/apt").glob("*.bin"),
        *(tree / "var/cache/apt/archives").glob("*.deb"),
        *(p for p in (tree / "var/lib/apt/lists").glob("*") if p.is_file() and p.name != "lock"),
    ]:
        if path.is_symlink() or path.is_file():
            path.unlink()
    shutil.rmtree(tree / "debootstrap", ignore_errors=True)
    for log_file in (tree / "var/log").rglob("*"):
        if log_file.is_file() and not log_file.is_symlink() and re.search(r"\.log$|^[bw]tmp$", log_file.name):
            log_file.write_bytes(b"")
