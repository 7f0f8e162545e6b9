"""The unprivileged system user QEMU runs as, and whether that user can reach a VM's files.

QEMU parses guest-controlled data all day; running it as root would give a guest that escapes it
the host. virtkit runs it as the system user ``virtkit-qemu`` (made by the set-up, like Debian's
libvirt makes ``libvirt-qemu``), in group ``kvm`` for /dev/kvm. The user owns the VM's writable
files (its disk overlay, UEFI variables, logs) and reads the image's files; a state root it cannot
reach (under a mode 0700 directory, say) makes QEMU run as root, said plainly at launch.

QEMU's own ``-runas`` cannot be used: QEMU 7.2 installs its seccomp sandbox
(elevateprivileges=deny) before it would drop privileges. virtkit drops them between fork and
exec instead (process.spawn).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from virtkit.host.qemuuser import CREATE_USER, KVM_GROUP, QEMU_USER

USER = QEMU_USER
CREATE_HINT = CREATE_USER


@dataclass(frozen=True)
class RunAs:
    """Who QEMU becomes: uid, primary gid and supplementary groups."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def lookup(user: str = USER) -> RunAs | None:
    """The user's ids, or None when it does not exist on this host."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    groups = {entry.pw_gid}
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrnam(KVM_GROUP).gr_gid)
    return RunAs(user, entry.pw_uid, entry.pw_gid, tuple(sorted(groups)))


def _may(mode: int, owner: int, group: int, who: RunAs, bits: tuple[int, int, int]) -> bool:
    if owner == who.uid:
        return bool(mode & bits[0])
    if group in who.groups:
        return bool(mode & bits[1])
    return bool(mode & bits[2])


def unreachable(path: Path, who: RunAs) -> Path | None:
    """The first directory on the way to `path` that `who` cannot enter (None: it can reach it).

    Directories not made yet are virtkit's to make, so the walk stops at the first missing one.
    """
    for directory in reversed(path.resolve().parents):
        try:
            info = directory.stat()
        except FileNotFoundError:
            return None
        except OSError:
            return directory
        if not _may(info.st_mode, info.st_uid, info.st_gid, who, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)):
            return directory
    return None


def unreadable(path: Path, who: RunAs, *, write: bool = False) -> bool:
    """Whether `who` may not read (or, with `write`, also write) the file at `path`."""
    try:
        info = path.stat()
    except OSError:
        return True
    read = _may(info.st_mode, info.st_uid, info.st_gid, who, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH))
    if not write:
        return not read
    wrote = _may(info.st_mode, info.st_uid, info.st_gid, who, (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH))
    return not (read and wrote)


def drop_privileges(who: RunAs) -> None:
    """In the child between fork and exec: become `who` for good (groups first, uid last)."""
    os.setgroups(list(who.groups))
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)
