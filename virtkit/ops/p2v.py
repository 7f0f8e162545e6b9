"""`virtkit p2v`: a new VM made of a running Linux server (P2V), or of a disk image taken with dd.

Three sources, one result (an image aliased NAME under the VM's root disk, the VM, its volumes):

- `--from ssh://root@HOST` (block mode): the server's disks (`--disks auto`: those holding its
  mounted local filesystems, found with `lsblk -J`) read with `dd` over ssh into sparse raw files,
  each imported by the image importer (images/disk.py: explicit format, checked, no backing
  file); the first becomes the image, the others block volumes NAME-diskN attached in order;
- `--from ssh://root@HOST --filesystem`: the server's local filesystems streamed with GNU tar
  over ssh (/proc, /sys, /dev, /run, /tmp, network and pseudo filesystems left out, as its
  /proc/mounts says) into a new one-partition ext4 disk (storage/treedisk.py), its fstab
  rewritten to the new filesystem's UUID;
- `--from-image FILE`: a raw disk taken with dd, or a qcow2, VMDK, VDI, VHD(X) disk (format told
  by its bytes and checked; backing files refused).

How the copy boots (images/guestboot.py): a disk with a bootloader boots it with BIOS firmware
(UEFI for a GPT disk with an EFI system partition and no BIOS boot code), as the server did; a
disk without one (the --filesystem copy always) boots the guest's own kernel and initrd from its
/boot directly, copied into the image (root=UUID= of its root filesystem, console on ttyS0). The
VM is a q35 machine with emulated devices (AHCI disks, e1000 NICs), which a kernel made for a
physical server drives; guest conversion (ops/convert.py, unless --no-convert) then adds virtio
drivers and switches the VM to virtio. Then it starts, unless --no-start.

Every step is undone should a later one fail: no instance, image, volume or file is left.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtkit.errors import ConflictError, NotFoundError, RemoteError, SpecError, StateError
from virtkit.images.guestboot import Boot
from virtkit.images.staged import DISK, INITRD, KERNEL, Progress, StagedImage, no_progress
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, VolumeRecord, validate_name
from virtkit.ops.p2vsource import Probe, Ssh, SshOptions
from virtkit.store import Store
from virtkit.units import GiB, MiB, format_size

log = logging.getLogger(__name__)

DEFAULT_MEMORY = 1 * GiB
DEFAULT_POOL = "default"
MARGIN = 512 * MiB  # free space kept beyond what a copy is expected to take
CONSOLE = "ttyS0"
PROGRESS_EVERY = 1.0
CHUNK = 1 * MiB  # seconds between byte counts shown

Undo = list[Callable[[], None]]


@dataclass(frozen=True)
class Options:
    name: str
    source: str | None = None  # the ssh:// URL
    image: Path | None = None  # --from-image
    ssh: SshOptions = field(default_factory=SshOptions)
    disks: str = "auto"
    filesystem: bool = False
    disk_size: int | None = None
    convert: bool = True
    start: bool = True
    cpus: int = 1
    memory: int = DEFAULT_MEMORY
    networks: tuple[str, ...] = ()
    pool: str = DEFAULT_POOL


@dataclass
class Result:
    name: str
    source: str
    mode: str  # filesystem | block | image
    boot: str  # bios | uefi | direct
    record: InstanceRecord | None = None
    image: ImageRecord | None = None
    volumes: list[VolumeRecord] = field(default_factory=list)
    copied: int = 0  # bytes received from the source
    hostname: str = ""
    changes: list[str] = field(default_factory=list)  # made to the copy (fstab, conversion)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "mode": self.mode, "boot": self.boot,
            "instance": self.record.model_dump(mode="json") if self.record else None,
            "image": self.image.fingerprint if self.image else None,
            "volumes": [f"{v.pool}/{v.name}" for v in self.volumes], "copied": self.copied,
            "hostname": self.hostname, "changes": self.changes, "notes": self.notes,
        }  # fmt: skip


def check_options(options: Options) -> None:
    if (options.source is None) == (options.image is None):
        raise SpecError("give the server with --from ssh://root@HOST, or a disk image with --from-image FILE "
                        "(one of them)")  # fmt: skip
    if options.image is not None and (options.filesystem or options.disks != "auto"):
        raise SpecError("--filesystem and --disks copy a server over ssh: not with --from-image")
    if options.disk_size is not None and not options.filesystem:
        raise SpecError("--disk sizes the new disk of a --filesystem copy", hint="add --filesystem")
    if options.filesystem and options.disks != "auto":
        raise SpecError("--disks chooses disks to copy whole: not with --filesystem")
    if options.disks != "auto":
        from virtkit.ops.p2vsource import check_device

        for disk in options.disks.split(","):
            check_device(disk.strip())


def check_free(root: Path, store: Store, options: Options) -> None:
    """The name is free (instance, image alias, volumes), the networks exist, the size fits."""
    from virtkit.ops.images import image_store
    from virtkit.ops.networks import Networks
    from virtkit.ops.nics import parse_nic
    from virtkit.ops.resources import check_resources

    name = validate_name(options.name)
    if store.find(InstanceRecord, name) is not None:
        raise ConflictError(f"instance {name!r} already exists", hint="choose another name")
    holder = next((r for r in image_store(root, store).list() if name in r.aliases), None)
    if holder is not None:
        raise ConflictError(f"image alias {name!r} already names image {holder.fingerprint[:12]}",
                            hint="choose another name, or delete that image first")  # fmt: skip
    check_resources(InstanceKind.VM.value, options.cpus, options.memory)
    networks = Networks(root, store)
    for text in options.networks:
        networks.planned(parse_nic(text).network)


def run(root: Path, store: Store, options: Options, progress: Progress = no_progress) -> Result:
    """Copy the source into a new VM (see the module's doc); every step undone should one fail."""
    from virtkit.ops.images import image_store

    check_options(options)
    check_free(root, store, options)
    undo: Undo = []
    with image_store(root, store).staging() as work:
        try:
            return _run(root, store, options, work, undo, progress)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    log.exception("undoing a failed p2v of %s", options.name)
            raise


def _run(root: Path, store: Store, options: Options, work: Path, undo: Undo, progress: Progress) -> Result:
    from virtkit.ops.p2vsource import check_server, parse_url

    if options.image is not None:
        result = Result(options.name, str(options.image), "image", "")
        extra: list[Path] = []
        image = _image_of_file(root, store, options, result, undo, progress)
    else:
        assert options.source is not None
        remote = parse_url(options.source)
        ssh = Ssh(remote, options.ssh)
        progress(f"probing {remote.label()}", None)
        probe = ssh.probe()
        check_server(remote, probe)
        mode = "filesystem" if options.filesystem else "block"
        result = Result(options.name, remote.label(), mode, "", hostname=probe.hostname[:64])
        if options.filesystem:
            image, extra = _image_of_tree(root, store, options, ssh, probe, result, undo, progress), []
        else:
            image, extra = _image_of_disks(root, store, options, ssh, probe, work, result, undo, progress)
    result.image = image
    volumes = [_volume(root, store, options, disk, i + 2, undo, progress) for i, disk in enumerate(extra)]
    result.record = _create(root, store, options, image, result, volumes, undo, progress)
    result.volumes = volumes
    _convert(root, store, options, result, progress)
    if options.start:
        from virtkit.ops.lifecycle import Lifecycle

        progress(f"starting {options.name}", None)
        result.record = Lifecycle(root, store).start(options.name)
    else:
        result.record = store.get(InstanceRecord, options.name)
    return result


# --- the image ---------------------------------------------------------------------------------


def _commit(
    root: Path, store: Store, name: str, make: Callable[[Path], StagedImage], undo: Undo
) -> ImageRecord:
    """Commit the image `make` stages, aliased `name`; undone by deleting it (or only the alias,
    when the same content was stored already)."""
    from virtkit.ops.images import add_staged, image_store

    images = image_store(root, store)
    before = {record.fingerprint for record in images.list()}
    record = add_staged(root, store, make, alias=name)
    if record.fingerprint in before:
        undo.append(lambda: _ignore(images.alias_remove(name)))
    else:
        undo.append(lambda: _ignore(images.delete(record.fingerprint)))
    return record


def _ignore(_result: object) -> None:
    """An undo step's result is not wanted."""


def _staged(staged: StagedImage, boot: Boot, staging: Path, source: str) -> StagedImage:
    """The imported disk as a p2v image: with the guest's kernel and initrd for a direct boot."""
    staged.source = f"p2v: {source}"
    staged.properties = {**staged.properties, "p2v": source, "boot": boot.how, "console": CONSOLE}
    if boot.how == "direct":
        assert boot.kernel is not None and boot.initrd is not None
        boot.kernel.rename(staging / "vmlinuz")
        boot.initrd.rename(staging / "initrd.img")
        (staging / "vmlinuz").chmod(0o644)
        (staging / "initrd.img").chmod(0o644)
        staged.files = {**staged.files, KERNEL: "vmlinuz", INITRD: "initrd.img"}
        staged.properties |= {"cmdline": f"root={boot.root} ro console=tty0 console={CONSOLE}",
                              "kernel_version": boot.release}  # fmt: skip
    return staged


def _inspected(staging: Path, staged: StagedImage, source: str, result: Result, arch: str) -> StagedImage:
    from virtkit.images.guestboot import inspect_disk, raw_view

    with raw_view(staging / staged.files[DISK]) as raw:
        boot = inspect_disk(raw, staging, arch)
    result.boot = boot.how
    result.hostname = result.hostname or boot.hostname
    result.notes += list(boot.notes)
    return _staged(staged, boot, staging, source)


def _image_of_file(root: Path, store: Store, options: Options, result: Result, undo: Undo,
                   progress: Progress) -> ImageRecord:  # fmt: skip
    from virtkit.host.cpuinfo import host_arch
    from virtkit.images.disk import import_disk

    path = options.image
    assert path is not None
    if not path.exists():
        raise NotFoundError(f"disk image {path} does not exist")
    arch = host_arch()

    def make(staging: Path) -> StagedImage:
        staged = import_disk(path, staging, name=options.name, arch=arch, progress=progress)
        return _inspected(staging, staged, path.name, result, arch)

    return _commit(root, store, options.name, make, undo)


def _image_of_tree(root: Path, store: Store, options: Options, ssh: Ssh, probe: Probe, result: Result,
                   undo: Undo, progress: Progress) -> ImageRecord:  # fmt: skip
    from virtkit.images.debiandisk import disk_size, tree_size
    from virtkit.images.disk import import_disk
    from virtkit.images.guestboot import tree_kernel
    from virtkit.images.rootinfo import binary_arch
    from virtkit.ops.p2vsource import copied_mounts, tar_command, used_bytes
    from virtkit.storage.archive import remove_tree
    from virtkit.storage.treedisk import PARTITION_START, make_disk, receive_tree, rewrite_fstab

    mounts = copied_mounts(probe.mounts)
    command = tar_command(mounts, probe.tar)
    used = used_bytes(probe, mounts)
    if options.disk_size is not None and used and options.disk_size < used:
        raise SpecError(f"--disk {format_size(options.disk_size)} cannot hold the {format_size(used)} the "
                        f"server's filesystems hold")  # fmt: skip
    _check_space(root, 2 * used, f"copying the {format_size(used)} of files of {result.source}")
    label = ssh.remote.label()
    result.notes.append("copied: " + ", ".join(m.target for m in mounts))

    def make(staging: Path) -> StagedImage:
        tree = staging / "tree"
        meter = _meter(progress, f"copying files from {label}", used)
        with ssh.stream(command, ok=(0, 1)) as fd:
            stats = receive_tree(fd, tree, label=label, limit=max(8 * used, 64 * GiB), on_bytes=meter)
        result.copied = stats.received
        if stats.devices:
            result.notes.append(f"{stats.devices} device node(s) outside /dev were left out")
        if stats.dropped_xattrs:
            result.notes.append(f"{stats.dropped_xattrs} extended attribute(s) were left out "
                                "(only file capabilities and user.* are copied)")  # fmt: skip
        arch = binary_arch(tree) or "x86_64"
        fs_uuid = str(uuid.uuid4())
        result.changes += rewrite_fstab(tree, fs_uuid, {m.target for m in mounts[1:]})
        boot = tree_kernel(tree, staging, arch, f"UUID={fs_uuid}")
        size = max(options.disk_size or 0, disk_size(tree_size(tree))) + PARTITION_START
        size = -(-size // MiB) * MiB
        raw = staging / "copy.raw"
        progress(f"making the {format_size(size)} disk", None)
        try:
            make_disk(tree, raw, size, fs_uuid)
        finally:
            remove_tree(tree)
        try:
            staged = import_disk(raw, staging, name=options.name, fmt="raw", arch=arch, progress=progress)
        finally:
            raw.unlink(missing_ok=True)
        result.boot = boot.how
        return _staged(staged, boot, staging, f"{label} (files)")

    return _commit(root, store, options.name, make, undo)


def _image_of_disks(
    root: Path,
    store: Store,
    options: Options,
    ssh: Ssh,
    probe: Probe,
    work: Path,
    result: Result,
    undo: Undo,
    progress: Progress,
) -> tuple[ImageRecord, list[Path]]:
    """The server's first disk as the image; the others copied into `work` for their volumes."""
    from virtkit.host.cpuinfo import host_arch
    from virtkit.images.disk import import_disk
    from virtkit.ops.p2vsource import chosen_disks, copied_mounts

    mounts = copied_mounts(probe.mounts) if options.disks == "auto" else []
    disks = chosen_disks(probe, options.disks, mounts)
    total = sum(d.size for d in disks)
    _check_space(root, total, f"copying the disks of {result.source} ({', '.join(d.name for d in disks)})")
    result.notes.append(
        f"copied the disks {', '.join(d.name for d in disks)} while the server ran: "
        "the copy is what a power cut would leave (journals replay at first boot)"
    )
    arch = host_arch()
    first, rest = disks[0], disks[1:]

    def make(staging: Path) -> StagedImage:
        raw = staging / f"{first.name}.raw"
        try:
            result.copied += _copy_disk(ssh, first.name, first.size, raw, progress)
            _check_space(root, raw.stat().st_blocks * 512, f"importing the copy of {first.name}")
            staged = import_disk(raw, staging, name=options.name, fmt="raw", arch=arch, progress=progress)
        finally:
            raw.unlink(missing_ok=True)
        return _inspected(staging, staged, f"{ssh.remote.label()} ({first.name})", result, arch)

    image = _commit(root, store, options.name, make, undo)
    extra = []
    for disk in rest:
        raw = work / f"{disk.name}.raw"
        result.copied += _copy_disk(ssh, disk.name, disk.size, raw, progress)
        extra.append(raw)
    return image, extra


def _copy_disk(ssh: Ssh, name: str, size: int, raw: Path, progress: Progress) -> int:
    """Stream /dev/NAME of the server into the sparse file `raw`; the bytes copied."""
    from virtkit.ops.p2vsource import dd_command

    meter = _meter(progress, f"copying {name} from {ssh.remote.label()}", size)
    with ssh.stream(dd_command(name)) as fd:
        copied = write_sparse(fd, raw, meter)
    if size and copied != size:
        raise RemoteError(f"the copy of {name} from {ssh.remote.label()} is {copied} bytes, the disk "
                         f"{size}: it was cut off")  # fmt: skip
    return copied


def write_sparse(fd: int, raw: Path, on_bytes: Callable[[int], None]) -> int:
    """Write what is read from `fd` into the new file `raw`, leaving runs of zeros as holes."""
    total = 0
    with raw.open("xb") as out:
        while chunk := os.read(fd, CHUNK):
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            total += len(chunk)
            on_bytes(total)
        out.truncate(total)
    return total


def _check_space(root: Path, need: int, what: str) -> None:
    where = root if root.exists() else root.parent
    free = shutil.disk_usage(where).free
    if need + MARGIN > free:
        raise StateError(
            f"{what} needs about {format_size(need + MARGIN)}; {where} has {format_size(free)} free",
            hint="free space under the state root, or copy less (--disks, --filesystem)",
        )


def _meter(progress: Progress, what: str, total: int) -> Callable[[int], None]:
    """A byte counter showing `what: N copied (of ~T)` at most once a PROGRESS_EVERY."""
    shown = [0.0]

    def count(done: int) -> None:
        now = time.monotonic()
        if now - shown[0] < PROGRESS_EVERY:
            return
        shown[0] = now
        of = f" of ~{format_size(total)}" if total else ""
        progress(f"{what}: {format_size(done)}{of}", min(0.99, done / total) if total else None)

    return count


# --- the VM ------------------------------------------------------------------------------------


def _volume(root: Path, store: Store, options: Options, raw: Path, index: int, undo: Undo,
            progress: Progress) -> VolumeRecord:  # fmt: skip
    from virtkit.images.disk import OUTPUT, import_disk
    from virtkit.ops.images import image_store
    from virtkit.ops.storage import Storage

    name = f"{options.name}-disk{index}"
    storage = Storage(root, store)
    try:
        with image_store(root, store).staging() as staging:
            import_disk(raw, staging, name=name, fmt="raw", progress=progress)
            volume = storage.adopt_volume(options.pool, name, staging / OUTPUT)
    finally:
        raw.unlink(missing_ok=True)
    undo.append(lambda: storage.delete_volume(volume.pool, volume.name))
    return volume


def _create(root: Path, store: Store, options: Options, image: ImageRecord, result: Result,
            volumes: list[VolumeRecord], undo: Undo, progress: Progress) -> InstanceRecord:  # fmt: skip
    from virtkit.ops.lifecycle import Lifecycle, Request
    from virtkit.ops.nics import parse_nic
    from virtkit.ops.volumes import Volumes

    config = {"devices": "emulated", "machine": "q35"}
    if result.boot in ("bios", "uefi"):
        config["firmware"] = result.boot
    life = Lifecycle(root, store)
    request = Request(image=image.fingerprint, name=options.name, kind=InstanceKind.VM, cpus=options.cpus,
                      memory=options.memory, config=config,
                      nics=tuple(parse_nic(text) for text in options.networks))  # fmt: skip
    progress("creating the VM", None)
    _record, runtime = life.create(request)
    undo.append(lambda: _ignore(life.delete(options.name, force=True)))
    result.notes += list(runtime.notices)
    attach = Volumes(root, store)
    for volume in volumes:
        attach.attach(volume.pool, volume.name, options.name)
    return store.get(InstanceRecord, options.name)


def _convert(root: Path, store: Store, options: Options, result: Result, progress: Progress) -> None:
    """Guest conversion (ops/convert.py): virtio drivers in, the VM switched to virtio. A copy that
    cannot be converted (it boots directly, or conversion fails) keeps emulated devices: a note."""
    from virtkit.errors import VirtkitError
    from virtkit.ops.convert import convert

    if not options.convert:
        result.notes.append("not converted (--no-convert): the VM keeps emulated devices")
        return
    progress("converting the guest", None)
    try:
        conversion = convert(root, store, options.name)
    except VirtkitError as exc:
        result.notes.append(f"not converted ({exc}): the VM keeps emulated devices")
        return
    result.changes += [str(change) for change in conversion.changes]
    if conversion.devices_before != conversion.devices_after:
        result.notes.append(f"devices: {conversion.devices_before} before the conversion, "
                            f"{conversion.devices_after} now")  # fmt: skip
