"""`/1.0/images`: list, show, delete and name images; build the tiny or a Debian image.

Reads are the viewer's; changes the operator's. Deleting and naming answer at once (store changes
of a moment); a build is an operation (202) whose progress is the builder's own, as the CLI's
progress bar shows it. A bad alias, an unknown image or a bad build request is a 4xx at once.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response

from virtkit.api.bodies import AliasBody, BuildBody
from virtkit.api.context import OPERATOR, VIEWER, ApiContext
from virtkit.api.routes.instances import accepted
from virtkit.images.staged import Progress
from virtkit.model import ImageRecord
from virtkit.ops import images
from virtkit.ops.operations import Context

router = APIRouter(prefix="/1.0/images", tags=["images"])

PROGRESS_EVERY = 0.5  # seconds between two progress records with the same message


def _document(record: ImageRecord) -> dict[str, Any]:
    return record.model_dump(mode="json")


@router.get("")
def list_images(ctx: ApiContext = VIEWER) -> list[dict[str, Any]]:
    """Every image (as `virtkit image list --json`)."""
    return [_document(record) for record in images.list_images(ctx.root, ctx.store)]


@router.post("/build", status_code=202)
def build_image(body: BuildBody, response: Response, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Build `tiny` (busybox guest, VM and container) or Debian by debootstrap (`release`,
    `packages`, `flavour`, `refresh`); the operation's result is {"images": [records]}."""
    body.check()
    if body.builder == "tiny":
        alias = images.tiny_alias(body.arch)
    else:
        alias = images.debian_alias(body.release or "bookworm", body.flavours()[0], body.arch)

    def work(op: Context) -> dict[str, Any]:
        progress = reporter(op)
        if body.builder == "tiny":
            built = [images.build_tiny_image(ctx.root, ctx.store, arch=body.arch, progress=progress)]
        else:
            built = images.build_debian_images(
                ctx.root, ctx.store, release=body.release or "bookworm", packages=list(body.packages),
                arch=body.arch, flavours=body.flavours(), refresh=body.refresh, progress=progress,
            )  # fmt: skip
        return {"images": [_document(record) for record in built]}

    return accepted(response, ctx.operations.submit("image-build", f"image/{alias}", work))


def reporter(op: Context) -> Progress:
    """A builder's progress (what, fraction or None) as the operation's (percent, message): an
    unknown fraction keeps the last percent; under one message, a moving percent is recorded at
    most twice a second (each record is a store write and an event)."""
    last_percent, last_message, last_at = 0.0, "", 0.0

    def report(what: str, fraction: float | None) -> None:
        nonlocal last_percent, last_message, last_at
        now = time.monotonic()
        percent = last_percent if fraction is None else max(0.0, min(100.0, fraction * 100))
        if (
            what == last_message
            and percent < 100
            and (percent == last_percent or now - last_at < PROGRESS_EVERY)
        ):
            return
        last_percent, last_message, last_at = percent, what, now
        op.progress(percent, what)

    return report


@router.get("/{ref}")
def get_image(ref: str, ctx: ApiContext = VIEWER) -> dict[str, Any]:
    """One image, by alias or fingerprint prefix (at least 4 characters)."""
    return _document(images.get_image(ctx.root, ctx.store, ref))


@router.delete("/{ref}")
def delete_image(ref: str, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Delete an image (409 while instances use it); the record it had."""
    return _document(images.delete_image(ctx.root, ctx.store, ref))


@router.post("/{ref}/aliases", status_code=201)
def add_alias(ref: str, body: AliasBody, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Give the image one more alias (409 if another image holds it); the image's record."""
    return _document(images.add_alias(ctx.root, ctx.store, ref, body.check()))


@router.delete("/aliases/{alias}")
def remove_alias(alias: str, ctx: ApiContext = OPERATOR) -> dict[str, Any]:
    """Remove an alias (the image stays); the record of the image it named."""
    from virtkit.units import validate_name

    return _document(images.remove_alias(ctx.root, ctx.store, validate_name(alias, what="image alias")))
