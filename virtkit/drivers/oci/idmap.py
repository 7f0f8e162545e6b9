"""Each container's own range of host uids and gids, so that root in a container is not root on the
host (a user namespace mapping its ids 0..65535 to BASE..BASE+65535).

- Where ranges come from: root's entries in /etc/subuid and /etc/subgid (`NAME_OR_UID:START:COUNT`,
  shadow-utils' format); when root has none, 1000000:1000000000, as Incus does (`host check`
  says which).
- Each container takes SIZE ids, disjoint from those of every other container of the same state
  root, for its whole life: chosen under a lock (flock of ROOT/locks/idmap/ranges.lock) among the
  ranges the other instance directories hold, saved in its own (`idmap`, JSON: rootfs.Shift, or
  {"host": why} for a container without a user namespace). A preview shows the first free range.
- Without a user namespace: when the instance asks (`idmap=host` in its config), when the host
  cannot (user namespaces disabled, or neither idmapped mounts nor metacopy work: a Note says
  so), or for a container made before virtkit mapped ids (its upper layer is owned by root).
- `check_host` is the `host check` line: can containers get user namespaces here, and how.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.drivers.base import INSTANCES_DIR, ONESHOTS_DIR
from virtkit.drivers.oci import rootfs
from virtkit.drivers.oci.rootfs import Shift
from virtkit.errors import HostCapabilityError, StoreError
from virtkit.logs import get_logger
from virtkit.store.files import atomic_write
from virtkit.store.locks import hold

if TYPE_CHECKING:
    from virtkit.drivers.base import InstancePaths
    from virtkit.drivers.oci.plan import InstanceLike

log = get_logger(__name__)

CACHE_FILE = Path("cache") / "idmap.json"
SIZE = 65536
SUBUID, SUBGID = Path("/etc/subuid"), Path("/etc/subgid")
MAX_USERNS = Path("/proc/sys/user/max_user_namespaces")
LOCK_TIMEOUT = 30.0
OPT_OUT = "host"  # config idmap=host: no user namespace


@dataclass(frozen=True)
class IdRange:
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def overlaps(self, other: IdRange) -> bool:
        return self.start < other.end and other.start < self.end


FALLBACK = IdRange(1_000_000, 1_000_000_000)  # Incus's default when root has no subordinate ids


@dataclass(frozen=True)
class Choice:
    """A container's ids: its Shift (None: no user namespace), and why the host gave none."""

    shift: Shift | None
    why: str = ""

    def notice(self, name: str) -> str:
        """What to tell the user ("": nothing)."""
        if not self.why:
            return ""
        return (f"{name} runs without a user namespace: {self.why}; root in it is root on the "
                "host (see `virtkit host check`)")  # fmt: skip


@dataclass(frozen=True)
class Support:
    """Whether containers get user namespaces here: the rootfs mode (None: they cannot), and why
    not."""

    mode: str | None
    why: str = ""
    fix: str = ""


def parse_subids(text: str, names: Iterable[str] = ("root", "0")) -> list[IdRange]:
    """The ranges /etc/subuid or /etc/subgid text gives to the user named one of `names`."""
    ranges = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in names or not (fields[1].isdigit() and fields[2].isdigit()):
            continue
        if int(fields[2]) > 0:
            ranges.append(IdRange(int(fields[1]), int(fields[2])))
    return ranges


def pools() -> tuple[list[IdRange], list[IdRange], str]:
    """(uid ranges, gid ranges, where they come from) for root."""
    found = []
    for path in (SUBUID, SUBGID):
        try:
            found.append(parse_subids(path.read_text()))
        except FileNotFoundError:
            found.append([])
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    uids, gids = found
    if uids and gids:
        return uids, gids, "root's entries in /etc/subuid and /etc/subgid"
    source = (f"{FALLBACK.start}:{FALLBACK.size} (root has no entry in "
              f"{'/etc/subgid' if uids else '/etc/subuid'}; Incus's default)")  # fmt: skip
    return uids or [FALLBACK], gids or [FALLBACK], source


def first_free(pool: Sequence[IdRange], taken: Sequence[IdRange], size: int = SIZE) -> int | None:
    """The lowest start of `size` ids inside one range of `pool`, overlapping none of `taken`.

    Ids below `size` are never given: they are the host's own users (and a range must start at or
    above its size for rootfs.shifted to tell shifted ids from others)."""
    for area in pool:
        starts = sorted({area.start, *(t.end for t in taken if area.start <= t.end < area.end)})
        for start in (max(s, size) for s in starts):
            wanted = IdRange(start, size)
            if wanted.end <= area.end and not any(wanted.overlaps(t) for t in taken):
                return start
    return None


def held(instances: Path, exclude: Path | None = None) -> tuple[list[IdRange], list[IdRange]]:
    """The (uid, gid) ranges held by the instance directories under `instances`."""
    uids, gids = [], []
    for directory in sorted(instances.iterdir()) if instances.is_dir() else ():
        if directory == exclude or not directory.is_dir():
            continue
        shift = rootfs.saved_shift(directory)
        if shift is not None:
            uids.append(IdRange(shift.uid, shift.size))
            gids.append(IdRange(shift.gid, shift.size))
    return uids, gids


def blocked(directory: Path, uid: int, gid: int) -> Path | None:
    """The first of `directory` and its parents that host uid/gid (no other group) cannot enter."""
    for path in (directory, *directory.parents):
        if not path.exists():  # a preview's instances/ (made 0755 with the first instance)
            continue
        info = path.stat()
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return path
    return None


_support: dict[int, Support] = {}


def host_support(directory: Path) -> Support:
    """Whether containers whose files live on `directory`'s filesystem (a state root) can get user
    namespaces: probed for real once per filesystem, kernel and sysctl, the verdict kept in
    ROOT/cache/idmap.json (a probe mounts twice: `virtkit run` cannot pay it every time)."""
    device = directory.stat().st_dev
    if device in _support:
        return _support[device]
    key = {"device": device, "kernel": os.uname().release, "max_userns": _max_userns()}
    cache = directory / CACHE_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            _support[device] = Support(saved["mode"], str(saved["why"]), str(saved["fix"]))
            return _support[device]
    support = _support[device] = _probe(directory)
    if directory.is_dir():
        with contextlib.suppress(OSError):
            cache.parent.mkdir(mode=0o700, exist_ok=True)
            document = {"key": key, "mode": support.mode, "why": support.why, "fix": support.fix}
            atomic_write(cache, json.dumps(document) + "\n")
    return support


def _max_userns() -> int:
    try:
        return int(MAX_USERNS.read_text())
    except (OSError, ValueError):
        return -1  # no such sysctl (an old kernel): try anyway


def _probe(directory: Path) -> Support:
    if _max_userns() == 0:
        return Support(None, f"{MAX_USERNS} is 0 (user namespaces are disabled)",
                       "sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d/)")  # fmt: skip
    uids, gids, _source = pools()
    mode, why = rootfs.probe(directory, uids[0].start, gids[0].start, SIZE)
    if mode is None:
        fix = (
            "keep the state root on a filesystem with idmapped mounts (ext4, xfs, btrfs, tmpfs), Linux 5.19+"
        )
        return Support(None, f"the image's files cannot be shown as the container's ({why})", fix)
    return Support(mode)


def _root_of(paths: InstancePaths) -> Path:
    return paths.dir.parent.parent


def plan(record: InstanceLike, paths: InstancePaths) -> Choice:
    """The container's ids as generate describes them: its saved range; for a preview (no
    instance directory yet) the first free one."""
    saved = paths.dir / rootfs.SAVED
    if saved.exists():  # chosen at creation, for the container's life
        shift = rootfs.saved_shift(paths.dir)
        if shift is not None:
            return Choice(shift)
        return Choice(None, str(json.loads(saved.read_text()).get(OPT_OUT) or ""))
    if paths.dir.exists() or _opted_out(record):
        return Choice(None)  # or made before virtkit mapped ids: its upper layer is root's
    return _choose(paths, exclude=None)


def allocate(record: InstanceLike, paths: InstancePaths) -> Choice:
    """Choose the new container's range under the state root's lock and save it in its
    directory (or save why it has none)."""
    if _opted_out(record):
        _save(paths, {OPT_OUT: ""})
        return Choice(None)
    root = _root_of(paths)
    with hold(root / "locks", "idmap", "ranges", LOCK_TIMEOUT):
        choice = _choose(paths, exclude=paths.dir)
        _save(paths, choice.shift.to_dict() if choice.shift is not None else {OPT_OUT: choice.why})
    return choice


def _choose(paths: InstancePaths, exclude: Path | None) -> Choice:
    root = _root_of(paths)
    support = host_support(root)
    if support.mode is None:
        return Choice(None, support.why)
    uid_pool, gid_pool, _source = pools()
    taken_uids, taken_gids = [], []
    for parent in (root / INSTANCES_DIR, root / ONESHOTS_DIR):  # registered and `virtkit run --rm`'s
        uids, gids = held(parent, exclude)
        taken_uids += uids
        taken_gids += gids
    uid, gid = first_free(uid_pool, taken_uids), first_free(gid_pool, taken_gids)
    if uid is None or gid is None:
        return Choice(None, f"every range of {SIZE} subordinate ids is taken")
    door = blocked(paths.dir.parent, uid, gid)
    if door is not None:
        mode = door.stat().st_mode & 0o777
        return Choice(None, f"its root (host uid {uid}) cannot enter {door} (mode {mode:04o})")
    return Choice(Shift(uid, gid, SIZE, support.mode))


def require_entry(paths: InstancePaths) -> None:
    """HostCapabilityError when the container's root can no longer reach its root filesystem
    (a directory above it was made private since): runc would only say "permission denied"."""
    shift = rootfs.saved_shift(paths.dir)
    door = blocked(paths.dir, shift.uid, shift.gid) if shift is not None else None
    if shift is not None and door is not None:
        raise HostCapabilityError(
            f"the container's root (host uid {shift.uid}) cannot enter {door} "
            f"(mode {door.stat().st_mode & 0o777:04o}), above its root filesystem",
            hint=f"chmod o+x {door}",
        )


def _save(paths: InstancePaths, data: dict[str, object]) -> None:
    atomic_write(paths.dir / rootfs.SAVED, json.dumps(data) + "\n", mode=0o644)


def check_host(directory: Path | None = None) -> tuple[bool, str]:
    """The `host check` line on user namespaces for containers, probed on `directory`'s
    filesystem (the state root; default the temporary directory): (ok, what it means)."""
    import tempfile

    where = directory if directory is not None and directory.is_dir() else Path(tempfile.gettempdir())
    try:
        support = host_support(where)
        uids, _gids, source = pools()
    except (OSError, StoreError) as exc:
        return False, f"user namespaces for containers could not be probed: {exc}"
    if support.mode is None:
        return False, (
            f"containers run without user namespaces (root in them is root on the host): {support.why}"
            + (f"; fix: {support.fix}" if support.fix else "")
        )
    how = ("an idmapped mount of the image (nothing copied)" if support.mode == rootfs.IDMAPPED else
           "overlayfs metacopy=on (owners shifted once per container, data not copied)")  # fmt: skip
    count = sum(r.size for r in uids) // SIZE
    return True, (
        f"each container gets its own {SIZE} uids/gids (room for {count}) from {source}; "
        f"its root filesystem by {how}"
    )


def _opted_out(record: InstanceLike) -> bool:
    """No user namespace asked for: `idmap=host`, or a privileged container (as LXD's
    security.privileged and Docker's --privileged: root in it is root on the host)."""
    return record.config.get("idmap") == OPT_OUT or record.config.get("privileged") == "true"

