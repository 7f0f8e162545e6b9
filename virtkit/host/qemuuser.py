"""Whether QEMU can run unprivileged here: the ``virtkit-qemu`` system user, and /dev/kvm open to it.

Read from the host's /etc/passwd and /etc/group (under a sysroot, for tests) and /dev/kvm's mode,
never by trying: `host check` changes nothing.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from virtkit.host.checks import Check, JsonValue, Status

QEMU_USER = "virtkit-qemu"
KVM_GROUP = "kvm"
CREATE_USER = (
    "useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "
    f"--groups {KVM_GROUP} {QEMU_USER}"
)
KVM_ACCESS_HINT = f"chgrp {KVM_GROUP} /dev/kvm && chmod 0660 /dev/kvm (as udev does on a Debian host)"


@dataclass(frozen=True)
class QemuUserState:
    uid: int | None  # None: no such user
    gids: tuple[int, ...] = ()  # primary and supplementary groups
    kvm_rw: bool | None = None  # whether it may open /dev/kvm read-write (None: no /dev/kvm)


def _table(path: Path) -> list[list[str]]:
    try:
        lines = path.read_text().splitlines()
        return [line.split(":") for line in lines if line and not line.startswith("#")]
    except OSError:
        return []


def probe_qemu_user(sysroot: Path) -> QemuUserState:
    users = {row[0]: row for row in _table(sysroot / "etc/passwd") if len(row) >= 4}
    row = users.get(QEMU_USER)
    if row is None or not row[2].isdigit() or not row[3].isdigit():
        return QemuUserState(None)
    uid, gids = int(row[2]), {int(row[3])}
    for group in _table(sysroot / "etc/group"):
        if len(group) >= 4 and group[2].isdigit() and QEMU_USER in group[3].split(","):
            gids.add(int(group[2]))
    try:
        info = (sysroot / "dev/kvm").stat()
    except OSError:
        return QemuUserState(uid, tuple(sorted(gids)))
    if info.st_uid == uid:
        bits = stat.S_IRUSR | stat.S_IWUSR
    elif info.st_gid in gids:
        bits = stat.S_IRGRP | stat.S_IWGRP
    else:
        bits = stat.S_IROTH | stat.S_IWOTH
    return QemuUserState(uid, tuple(sorted(gids)), info.st_mode & bits == bits)


def qemu_user_check(state: QemuUserState, kvm_usable: bool) -> Check:
    details: dict[str, JsonValue] = {"user": QEMU_USER, "uid": state.uid, "kvm_rw": state.kvm_rw}
    if state.uid is None:
        return Check(
            "qemu.user",
            Status.WARN,
            f"no {QEMU_USER} user: QEMU runs as root, so a guest that escapes QEMU owns the host",
            remedy=CREATE_USER,
            details=details,
        )
    if kvm_usable and not state.kvm_rw:
        return Check(
            "qemu.user",
            Status.WARN,
            f"{QEMU_USER} cannot open /dev/kvm: KVM guests run QEMU as root",
            remedy=KVM_ACCESS_HINT,
            details=details,
        )
    return Check("qemu.user", Status.PASS, f"QEMU runs as the unprivileged user {QEMU_USER}", details=details)
