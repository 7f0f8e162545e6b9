"""A container's copy-on-write root filesystem: overlayfs with the image's unpacked tree as the
read-only lower layer (shared by every container of the image) and the container's own upper and
work directories. Deleting the container removes its upper layer only.

In a user namespace (idmap.py) the container's root is host uid BASE, not 0, so the image's files
(owned by 0 on disk) must show as owned by BASE+N, without copying or changing the shared image.
Two ways, chosen once per container by `probe` and saved with its range (`Shift.mode`):

- idmapped (overlayfs takes idmapped lower layers since Linux 5.19): at each mount the image's
  tree is attached idmapped and read-only at `lower/` beside the overlay (idmount.py), the
  overlay is mounted over it, and `lower/` is unmounted again at once: overlayfs keeps its own
  private clone of each layer. One mount per running container, as without a user namespace.
- metacopy: the overlay is mounted with metacopy=on and, once at creation, every entry of the
  merged tree is lchown'ed into the range; with metacopy a chown copies up the metadata only (an
  empty file in upper whose xattr points at the data in lower). Every later mount must pass
  metacopy=on too, or those files would read as empty: the mode is saved for that.

Either way upper/ and work/ belong to the container's root: what it creates lands in upper/,
owned by BASE+N on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from virtkit.drivers.oci import idmount
from virtkit.drivers.oci.spec import IdMap
from virtkit.errors import HostCapabilityError, SpecError, StoreError, ToolError, VirtkitError
from virtkit.logs import get_logger

log = get_logger(__name__)

IDMAPPED = "idmapped"
METACOPY = "metacopy"
SAVED = "idmap"  # in the instance directory: the container's Shift (idmap.py writes it)
STAGE = "lower"  # beside the merged tree: where the idmapped image is attached while mounting
OVERFLOW = 65534  # what the kernel shows for an unmapped id (nobody)


@dataclass(frozen=True)
class Shift:
    """A container's ids on the host: its id N is host uid+N / gid+N (N < size); and how its root
    filesystem shows the image's files so (IDMAPPED or METACOPY)."""

    uid: int
    gid: int
    size: int
    mode: str

    def uid_maps(self) -> tuple[IdMap, ...]:
        return (IdMap(0, self.uid, self.size),)

    def gid_maps(self) -> tuple[IdMap, ...]:
        return (IdMap(0, self.gid, self.size),)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shift:
        values = {key: data.get(key) for key in ("uid", "gid", "size")}
        if not all(isinstance(v, int) and v > 0 for v in values.values()) or data.get("mode") not in (
            IDMAPPED, METACOPY,
        ):  # fmt: skip
            raise ValueError(f"not a container id range: {data!r}")
        return cls(int(data["uid"]), int(data["gid"]), int(data["size"]), str(data["mode"]))


@dataclass(frozen=True)
class Layers:
    lower: Path  # the image's rootfs (never written)
    upper: Path
    work: Path
    merged: Path
    # None: the Shift saved in the instance directory (upper's parent), if any; a caller that does
    # not say still mounts a metacopy upper layer with metacopy=on.
    shift: Shift | None = None
    # A linked clone's shared layers between upper and lower, nearest first (docs/clones.md): owned
    # by the container's own ids like the image's tree, and shown in its range the same way.
    extra: tuple[Path, ...] = ()

    @property
    def lowers(self) -> tuple[Path, ...]:
        return (*self.extra, self.lower)


def saved_shift(instance_dir: Path) -> Shift | None:
    """The container's saved id range, or None: it has none (no user namespace)."""
    path = instance_dir / SAVED
    try:
        data = json.loads(path.read_text())
        return Shift.from_dict(data) if isinstance(data, dict) and "uid" in data else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read the container's id range in {path}: {exc}") from exc


def _shift_of(layers: Layers) -> Shift | None:
    return layers.shift if layers.shift is not None else saved_shift(layers.upper.parent)


def _mountinfo() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def _escaped(path: Path) -> str:
    target = str(path)
    for char, code in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        target = target.replace(char, code)
    return target


def mounted(path: Path) -> bool:
    """Whether something is mounted at `path`."""
    escaped = _escaped(path)
    return any(line.split()[4] == escaped for line in _mountinfo() if len(line.split()) > 4)


def mounted_under(path: Path) -> list[str]:
    """The mount points at or below `path`."""
    top = _escaped(path)
    points = [line.split()[4] for line in _mountinfo() if len(line.split()) > 4]
    return [p for p in points if p == top or p.startswith(top + "/")]


def prepare(layers: Layers) -> None:
    """Make the upper and work directories (the container's root's, when it has a Shift); with
    METACOPY, shift the owners of the whole tree once (mounted, then unmounted)."""
    shift = _shift_of(layers)
    for directory in (layers.upper, layers.work):
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        if shift is not None:
            os.chown(directory, shift.uid, shift.gid)
    if shift is not None and shift.mode == METACOPY:
        mount(layers)
        try:
            count = shift_tree(layers.merged, shift)
        except OSError as exc:
            raise VirtkitError(f"cannot give the container's ids to its root filesystem: {exc}") from exc
        finally:
            unmount(layers.merged)
        log.debug(
            "shifted the owners of %d entries of %s to %d:%d", count, layers.merged, shift.uid, shift.gid
        )


def mount(layers: Layers) -> None:
    """Mount the overlay at `layers.merged` (nothing to do if it already is)."""
    stage = layers.merged.parent / STAGE
    for path in (*layers.lowers, layers.upper, layers.work, layers.merged, stage):
        if any(char in str(path) for char in ",:\n"):
            raise SpecError(f"path {path} holds a character overlayfs options cannot carry (, : or newline)")
    if mounted(layers.merged):
        return
    for directory in (layers.upper, layers.work, layers.merged):
        directory.mkdir(mode=0o755, exist_ok=True)
    shift = _shift_of(layers)
    options = f"upperdir={layers.upper},workdir={layers.work}"
    if shift is None or shift.mode == METACOPY:
        options += ",metacopy=on" if shift is not None else ""
        _overlay(f"lowerdir={':'.join(map(str, layers.lowers))},{options}", layers.merged)
        return
    stages = [_stage(layers.merged, index) for index in range(len(layers.lowers))]
    try:
        for lower, point in zip(layers.lowers, stages, strict=True):
            _attach(lower, point, shift)
        _overlay(f"lowerdir={':'.join(map(str, stages))},{options}", layers.merged)
    finally:
        for point in stages:  # the overlay holds its own clone of each layer
            if mounted(point):
                _detach(point)


def _stage(merged: Path, index: int) -> Path:
    """Where lower layer `index` (0: the nearest; the image's tree when there are no layers) is
    attached idmapped while the overlay is mounted: `lower` beside the merged tree, then `lower.N`."""
    return merged.parent / (STAGE if index == 0 else f"{STAGE}.{index}")


def _attach(lower: Path, stage: Path, shift: Shift) -> None:
    stage.mkdir(mode=0o700, exist_ok=True)
    if mounted(stage):  # left by a crash between the two mounts
        _detach(stage)
    try:
        idmount.attach_idmapped(lower, stage, shift.uid, shift.gid, shift.size)
    except OSError as exc:
        raise HostCapabilityError(
            f"cannot attach the image's files idmapped for the container's ids: {exc}",
            hint="see `virtkit host check` (user namespaces and idmapped mounts)",
        ) from exc


def unmount(merged: Path) -> None:
    """Unmount the overlay, and the idmapped image if a crash left it attached (nothing mounted
    is fine)."""
    for stage in [merged.parent / STAGE, *sorted(merged.parent.glob(f"{STAGE}.[0-9]*"))]:
        if mounted(stage):
            _detach(stage)
    if mounted(merged):
        try:
            idmount.unmount(merged)
        except OSError as exc:
            raise ToolError(f"unmounting the root filesystem {merged} failed: {exc.strerror}") from exc


def _overlay(options: str, merged: Path) -> None:
    try:
        idmount.mount_overlay(options, merged)
    except OSError as exc:
        raise ToolError(f"mounting the root filesystem at {merged} failed: {exc.strerror}") from exc


def _detach(stage: Path) -> None:
    try:
        idmount.detach(stage)
    except OSError as exc:
        what = f"cannot unmount the image's idmapped files at {stage}: {exc}"
        raise VirtkitError(what, hint=f"umount {stage}") from exc


def shifted(value: int, base: int, size: int) -> int:
    """The host id of on-disk id `value` in a range of `size` ids from `base` (one already in the
    range stays: a hard link seen twice is shifted once); an id beyond the range is nobody."""
    if base <= value < base + size:
        return value
    return base + (value if value < size else min(OVERFLOW, size - 1))


def shift_tree(top: Path, shift: Shift) -> int:
    """lchown every entry under `top` (a merged overlay mounted with metacopy=on) into `shift`,
    keeping setuid/setgid bits (chown clears them); how many entries were seen.

    File capabilities (security.capability) are dropped by the kernel on chown and not restored.
    """
    if shift.uid < shift.size or shift.gid < shift.size:
        raise SpecError(f"id range {shift.uid}:{shift.gid} starts below its size {shift.size}")

    def fail(exc: OSError) -> None:
        raise exc

    count = 1
    _shift_one(str(top), shift)
    for directory, dirs, files in os.walk(top, onerror=fail):
        for name in (*dirs, *files):
            _shift_one(os.path.join(directory, name), shift)
            count += 1
    return count


def _shift_one(path: str, shift: Shift) -> None:
    info = os.lstat(path)
    uid, gid = shifted(info.st_uid, shift.uid, shift.size), shifted(info.st_gid, shift.gid, shift.size)
    if (uid, gid) == (info.st_uid, info.st_gid):
        return
    os.lchown(path, uid, gid)
    if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(info.st_mode))


def probe(directory: Path, uid: int, gid: int, size: int) -> tuple[str | None, str]:
    """Which way (IDMAPPED, else METACOPY) gives an overlay on `directory`'s filesystem a lower
    layer shown shifted into uid/gid, tried for real in a scratch directory there; (None, why)
    when neither works."""
    import tempfile  # here: every container start imports this module, the probe is rare

    scratch = Path(tempfile.mkdtemp(prefix=".rootfs-probe.", dir=directory))
    failures = []
    try:
        image = scratch / "image"
        image.mkdir()
        (image / "file").write_bytes(b"probe")
        for mode in (IDMAPPED, METACOPY):
            try:
                if _works(image, scratch / mode, Shift(uid, gid, size, mode)):
                    return mode, ""
                failures.append(f"{mode}: the image's files did not show as owned by {uid}")
            except (OSError, VirtkitError) as exc:
                failures.append(f"{mode}: {exc}")
        return None, "; ".join(failures)
    finally:
        left = mounted_under(scratch)
        if left:
            log.warning("probe mounts left at %s: not removing %s", ", ".join(left), scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _works(image: Path, where: Path, shift: Shift) -> bool:
    where.mkdir()
    layers = Layers(image, where / "upper", where / "work", where / "merged", shift)
    prepare(layers)
    mount(layers)
    try:
        seen = os.stat(layers.merged / "file")
        shown = (seen.st_uid, seen.st_gid) == (shift.uid, shift.gid)
        intact = (layers.merged / "file").read_bytes() == b"probe" and os.stat(image / "file").st_uid == 0
    finally:
        unmount(layers.merged)
    return shown and intact
