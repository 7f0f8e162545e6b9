"""Import an OCI image layout or a `docker save` archive as an application-container image.

The source is a directory (an OCI layout) or a tar archive of one, or of a docker save, possibly
compressed. An archive is first unpacked safely into a work directory inside the staging
directory, which is removed afterwards. Then one image is chosen (by tag, else the only one, else
the one for this host's architecture), every blob it uses is checked against its digest, and its
layers are applied in order with whiteouts into ``staging/rootfs`` - in Python, as DESIGN.md
allows, so no skopeo/umoci quirks. The image config gives the container settings (entrypoint,
cmd, env, workdir, user, ports, labels) and the architecture.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

from virtkit.errors import NotFoundError, RejectedError, VirtkitError
from virtkit.images import rootinfo
from virtkit.images.ociconfig import config_platform, container_config
from virtkit.images.ocilayout import Choice, Image, Layout
from virtkit.images.staged import ROOTFS, Progress, StagedImage, no_progress
from virtkit.storage import ExtractStats, Limits, extract, remove_tree
from virtkit.storage.tarstream import TarStream

WORK_DIR = ".oci-source"
# The names the first members of an OCI layout or a docker save archive have; a rootfs has none.
_IMAGE_NAMES = re.compile(
    r"oci-layout|index\.json|manifest\.json|repositories|blobs(?:/.*)?|[0-9a-f]{64}(?:\.json|/.*)?"
)


def import_oci(
    source: Path, staging: Path, *, name: str, tag: str | None = None, progress: Progress = no_progress
) -> StagedImage:
    """Import the image tagged `tag` (or the only one, or this host's) from `source` into `staging`.

    Raises NotFoundError for a missing source, RejectedError for anything refused (a digest that
    does not match, a missing blob, a hostile layer, several images and no way to choose).
    """
    source = Path(os.path.abspath(source))
    if not source.exists():
        raise NotFoundError(f"{source} does not exist")
    work = staging / WORK_DIR
    rootfs = staging / ROOTFS
    try:
        root = source if source.is_dir() else _unpack(source, work, progress)
        layout = Layout(root, source.name)
        choice = select(layout.choices(), tag, source.name)
        image = choice.image()
        arch, system = config_platform(image.config, f"config of {source.name}")
        if system != "linux":
            raise RejectedError(f"the image in {source.name} is for {system}, not linux")
        container = container_config(image.config, f"config of {source.name}")
        notes = _apply(layout, image, rootfs, source.name, progress)
    finally:
        remove_tree(work)
    properties = {k: v for k, v in rootinfo.describe(rootfs).items() if k.startswith("os.")}
    properties.update(notes, config_digest=image.config_digest, layers=str(len(image.layers)))
    if choice.refs:
        properties["ref"] = choice.refs[0]
    return StagedImage(
        name=name,
        kinds=["container"],
        arch=arch,
        format=layout.format,
        source=str(source),
        files={ROOTFS: ROOTFS},
        properties=properties,
        container=container,
    )


def select(choices: list[Choice], tag: str | None, label: str) -> Choice:
    """The image tagged `tag`; else the only one; else the one for this host's architecture."""
    picked = [c for c in choices if any(_tag_matches(ref, tag) for ref in c.refs)] if tag else choices
    if not picked:
        held = f"it holds {_describe(choices)}" if choices else "it holds no image"
        raise RejectedError(
            f"{label} has no image tagged {tag!r}: {held}" if tag else f"{label} holds no image"
        )
    if len(picked) == 1:
        return picked[0]
    host = rootinfo.host_arch()
    native = [c for c in picked if _arch(c) == host and (c.os or "linux") == "linux"]
    if len(native) == 1:
        return native[0]
    raise RejectedError(
        f"{label} holds {len(picked)} images{f' tagged {tag!r}' if tag else ''} and none is the one "
        f"for this host ({host}): {_describe(picked)}",
        hint="choose one by its tag",
    )


def _tag_matches(ref: str, tag: str) -> bool:
    return ref == tag or ref.endswith((f":{tag}", f"/{tag}")) or tag.endswith(f":{ref}")


def _arch(choice: Choice) -> str:
    return choice.arch or config_platform(choice.image().config, "image config")[0]


def _describe(choices: list[Choice]) -> str:
    return ", ".join(f"{', '.join(c.refs) or '(untagged)'} ({_arch(c)})" for c in choices)


def _unpack(source: Path, work: Path, progress: Progress) -> Path:
    what = f"reading {source.name}"
    extract(
        source,
        work,
        strict=True,
        progress=lambda done, total: progress(what, done / total if total else None),
    )
    return work


def _apply(layout: Layout, image: Image, rootfs: Path, label: str, progress: Progress) -> dict[str, str]:
    """Check every layer against its digest, then apply them in order; returns extraction notes."""
    count = len(image.layers)
    paths = []
    for number, layer in enumerate(image.layers, start=1):
        progress(f"checking layer {number}/{count}", (number - 1) / count)
        paths.append(layout.verified(layer.path, layer.digest, layer.size, f"layer {number}"))
    rootfs.mkdir(exist_ok=True)
    notes: dict[str, str] = {}
    budget = Limits().max_bytes
    for number, (layer, path) in enumerate(zip(image.layers, paths, strict=True), start=1):
        what = f"unpacking layer {number}/{count}"

        def report(done: int, total: int, what: str = what) -> None:
            progress(what, done / total if total else None)

        stats: ExtractStats = extract(
            path,
            rootfs,
            label=f"layer {number}/{count} ({layer.digest[:19]}) of {label}",
            layer=True,
            owners=True,
            limits=Limits(max_bytes=max(budget, 1)),
            progress=report,
        )
        budget -= stats.bytes
        notes = rootinfo.extraction_notes(stats, notes)
    return notes


def is_image_archive(source: Path) -> bool:
    """Whether `source` (a directory, or a tar archive, compressed or not) looks like an OCI layout
    or a docker save archive rather than a root filesystem; reads only the first members' names."""
    if source.is_dir():
        try:
            Layout(source, source.name)
        except RejectedError:
            return False
        return True
    try:
        with (
            TarStream(source, source.name, Limits()) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            for _ in range(8):
                member = tar.next()
                if member is None:
                    return False
                if _IMAGE_NAMES.fullmatch(member.name.removeprefix("./")):
                    return True
    except (VirtkitError, tarfile.TarError, OSError, ValueError):
        return False
    return False
