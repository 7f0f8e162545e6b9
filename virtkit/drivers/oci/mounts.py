"""A container's volumes: bind mounts of filesystem volumes' directories, shown in its user namespace.

runc 1.1 cannot idmap a mount itself (runc 1.2 can), so virtkit makes each volume's mount and runc
only binds it: at every start, before `runc create`, a clone of the volume's directory, idmapped
into the container's ids (on-disk id N shows as the container's N) and with `nodev`, is attached
at a staging point in the instance directory (`volumes/vol0`); config.json binds that point at the
volume's path inside; once runc made the container (its mount namespace holds its own copy), the
staging mounts are detached again. So nothing of a volume is mounted on the host while the
container runs, and deleting the instance directory can never reach into a volume.

On disk a volume keeps ids in the container's own terms: root inside writes files owned by uid 0,
user 1000 inside files owned by 1000 (as Incus stores custom volumes on idmapped hosts). The same
volume reads the same in any container it is attached to, whatever its range of host ids; host
root's files show as the container's root. Ids outside the container's 65536 show as nobody.

Without a user namespace (`idmap=host`, privileged) the clone is not idmapped: ids are the host's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtkit.drivers.oci import idmount
from virtkit.drivers.oci.rootfs import Shift, mounted, mounted_under
from virtkit.errors import HostCapabilityError, SpecError, StateError, VirtkitError
from virtkit.logs import get_logger

if TYPE_CHECKING:  # not at run time: `virtkit run` builds bundles without pydantic
    from virtkit.model import VolumeAttachment

log = get_logger(__name__)

STAGES = "volumes"  # in the instance directory: where volumes are attached while the container starts
OPTIONS = ("rbind", "nodev")  # a volume holds data: a device node in it opens nothing


@dataclass(frozen=True)
class VolumeMount:
    """One volume as the container's bundle binds it: `source`, the volume's directory on the host;
    `stage`, where it is attached (idmapped) for runc to bind; `destination`, its path inside."""

    name: str
    source: str
    stage: str
    destination: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeMount:
        return cls(str(data["name"]), str(data["source"]), str(data["stage"]), str(data["destination"]))


def stage_dir(instance_dir: Path) -> Path:
    return instance_dir / STAGES


def plan(volumes: Sequence[VolumeAttachment], instance_dir: Path) -> tuple[VolumeMount, ...]:
    """The mounts of a container's attached volumes (filesystem volumes with a path, only)."""
    mounts = []
    for volume in volumes:
        if volume.type != "filesystem" or volume.path is None:
            raise SpecError(
                f"volume {volume.name!r} of pool {volume.pool!r} cannot be mounted in a container: "
                + (
                    "it is a block volume (a disk, for VMs)"
                    if volume.type != "filesystem"
                    else "it has no path inside"
                ),
                hint=f"detach it: virtkit volume detach {volume.pool} {volume.name} INSTANCE",
            )
        stage = stage_dir(instance_dir) / volume.device
        mounts.append(VolumeMount(f"{volume.pool}/{volume.name}", volume.source, str(stage), volume.path))
    return tuple(mounts)


def saved(config: dict[str, Any]) -> tuple[VolumeMount, ...]:
    """The volume mounts a saved runtime's config holds (none before volumes existed)."""
    return tuple(VolumeMount.from_dict(item) for item in config.get("volumes", ()))


def bind(mount: VolumeMount) -> dict[str, Any]:
    """Its entry in config.json's `mounts`."""
    return {"destination": mount.destination, "type": "bind", "source": mount.stage, "options": list(OPTIONS)}


@contextlib.contextmanager
def namespace_of(shift: Shift | None) -> Iterator[int | None]:
    """A user namespace descriptor mapping like the container's (None without one)."""
    if shift is None:
        yield None
        return
    with idmount.user_namespace(shift.uid, shift.gid, shift.size) as userns:
        yield userns


def clone(source: str, shift: Shift | None) -> int:
    """A detached clone of volume directory `source`, `nodev`, idmapped into `shift`; its descriptor.
    A clear error when the directory is gone or its filesystem cannot idmap."""
    with namespace_of(shift) as userns:
        try:
            tree = idmount.clone_tree(Path(source), idmount.MOUNT_ATTR_NODEV, userns)
        except OSError as exc:
            raise _clone_error(source, exc) from exc
    if not stat.S_ISDIR(os.fstat(tree).st_mode):  # a symlink, not followed, is cloned as itself
        os.close(tree)
        raise _clone_error(source, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
    return tree


def _clone_error(source: str, exc: OSError) -> VirtkitError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return StateError(
            f"the volume directory {source} is missing (or is no longer a plain directory)",
            hint="is its pool's filesystem mounted? see `virtkit storage pool list`",
        )
    if exc.errno in (errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP):
        return HostCapabilityError(
            f"the filesystem of {source} cannot show the volume in the container's ids "
            f"(idmapped mounts: {exc.strerror})",
            hint="keep the pool on a filesystem with idmapped mounts (ext4, xfs, btrfs, tmpfs; Linux 5.12+)",
        )
    return VirtkitError(f"cannot mount the volume directory {source}: {exc.strerror or exc}")


def check(source: str, shift: Shift | None) -> None:
    """Refuse now (at attach) what `attach_stages` would refuse at the next start."""
    os.close(clone(source, shift))


def attach_stages(mounts: Sequence[VolumeMount], shift: Shift | None) -> None:
    """Attach every volume at its staging point (before `runc create`); all or none."""
    done: list[VolumeMount] = []
    try:
        for mount in mounts:
            stage = Path(mount.stage)
            stage.parent.mkdir(mode=0o711, exist_ok=True)  # the container's root passes to bind it
            stage.mkdir(mode=0o700, exist_ok=True)
            if mounted(stage):  # left by a crash between attaching and detaching
                idmount.unmount_lazily(stage)
            tree = clone(mount.source, shift)
            try:
                idmount.move_tree(tree, stage)
            finally:
                os.close(tree)
            done.append(mount)
    except BaseException:
        detach_stages(done)
        raise


def detach_stages(mounts: Sequence[VolumeMount]) -> None:
    """Detach the staging mounts (once runc has bound them, or after a failed start)."""
    for mount in mounts:
        stage = Path(mount.stage)
        if mounted(stage):
            idmount.unmount_lazily(stage)


def clear(instance_dir: Path) -> None:
    """Detach whatever is still attached under the staging directory (a crash left it), and refuse
    to go on while anything stays there: the instance directory is removed with the instance."""
    top = stage_dir(instance_dir)
    for point in sorted(mounted_under(top), key=len, reverse=True):
        with contextlib.suppress(OSError):
            idmount.unmount_lazily(point)
    left = mounted_under(top)
    if left:
        raise VirtkitError(
            f"a volume is still mounted at {left[0]}", hint=f"umount -l {left[0]}, then try again"
        )
