"""`virtkit run`: one command in a new container, in the foreground; its exit status is the answer.

With `--rm` the container is never registered: it lives in ROOT/oneshots/NAME while the command
runs (where `virtkit list` finds it) and is gone, files and mounts, when it ends; if virtkit itself
is killed first, the next `virtkit run` cleans up after it (ops/oneshots.py).
That path is timed against a raw `runc run` (benchmarks/container_run.py), so it and everything it
imports stay free of pydantic, click and rich (tests/unit/test_lean_imports.py holds it to that):
the image is found with a read-only look-up of the state database (store.peek), and anything
unusual (an unknown image, a name in use) takes the full way for its error message.

Without `--rm` the container is an ordinary instance (created through ops.lifecycle), run in the
foreground the same way, and left stopped afterwards for `virtkit start` or `delete`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtkit.drivers.base import ONESHOTS_DIR, InstancePaths
from virtkit.drivers.oci import foreground, idmap, runtime
from virtkit.drivers.oci.bundle import build_config
from virtkit.drivers.oci.plan import ImageFacts, OneShot, build_spec, container_id
from virtkit.drivers.oci.spec import ContainerSpec
from virtkit.errors import ConflictError, SpecError, ToolError
from virtkit.images.staged import ROOTFS
from virtkit.ops import oneshots
from virtkit.ops.resources import check_resources
from virtkit.store import peek
from virtkit.units import MiB, validate_name

ONESHOT_DIR = Path(ONESHOTS_DIR)


@dataclass(frozen=True)
class RunRequest:
    """What `virtkit run` is asked to do, as parsed from its command line."""

    image: str
    command: tuple[str, ...]
    name: str | None = None
    remove: bool = False
    cpus: float = 1
    memory: int = 256 * MiB
    processes: str | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    tty: bool = False
    cpu_set: str | None = None
    privileged: bool = False

    def config(self) -> dict[str, str]:
        """The request's settings as an instance's config (what the container plan reads)."""
        for entry in self.env:
            if "=" not in entry or entry.startswith("="):
                raise SpecError(f"invalid environment entry {entry!r}: expected NAME=VALUE")
        if self.workdir is not None and not self.workdir.startswith("/"):
            raise SpecError(f"invalid working directory {self.workdir!r}: it must be an absolute path")
        config = {"command": json.dumps(list(self.command))} if self.command else {}  # none: the image's
        if self.env:
            config["env"] = "\n".join(self.env)
        if self.workdir:
            config["workdir"] = self.workdir
        if self.processes is not None:
            config["processes"] = self.processes
        if self.tty:
            config["tty"] = "true"
        if self.cpu_set is not None:
            config["cpu_set"] = self.cpu_set
        if self.privileged:
            config["privileged"] = "true"
        return config


def run(root: Path, request: RunRequest) -> int:
    """Run the request's command in a new container and return its exit status."""
    config = request.config()
    check_resources("container", request.cpus, request.memory)
    if request.tty and not os.isatty(0):
        raise SpecError("--tty needs a terminal on standard input", hint="drop -t when input is a pipe")
    if not request.remove:
        return _run_registered(root, request, config)
    name = validate_name(request.name) if request.name else f"run-{os.urandom(4).hex()}"
    oneshots.reap_stale(root)
    if request.name and _registered(root, name):
        raise ConflictError(f"instance {name!r} already exists", hint="choose another --name")
    paths = InstancePaths(root / ONESHOT_DIR / name)
    if not root.is_dir():  # the quick look found no store; the full one says why (and makes the root)
        _full_image(root, request.image)
    paths.dir.parent.mkdir(mode=0o711, exist_ok=True)  # each container's root enters its own
    try:
        paths.dir.mkdir(mode=0o750)
    except FileExistsError:
        hint = "choose another --name"
        raise ConflictError(f"a `virtkit run` named {name!r} is running", hint=hint) from None
    try:
        plan = plan_oneshot(root, request, config, paths)
        facts = {"cid": plan.cid, "image": request.image, "cpus": request.cpus, "memory": request.memory}
        chosen = runtime.chosen(root)
        oneshots.claim(paths, {**facts, "runtime": chosen.binary})
        foreground.find_command(plan.lower, plan.spec.args[0], plan.spec.env)
        config_json = build_config(plan.spec)
        code, error = foreground.run_bundle(config_json, plan.lower, paths, chosen, plan.cid)
    finally:
        shutil.rmtree(paths.dir, ignore_errors=True)
    return _answer(code, error)


@dataclass(frozen=True)
class OneShotPlan:
    spec: ContainerSpec
    lower: Path  # the image's rootfs
    cid: str


def plan_oneshot(
    root: Path, request: RunRequest, config: dict[str, str], paths: InstancePaths
) -> OneShotPlan:
    """The container `virtkit run --rm` makes in `paths` for `request` (benchmarks/container_run.py
    runs the same with raw runc)."""
    data = peek.image(root, request.image) or _full_image(root, request.image)
    image = ImageFacts.from_json(data)
    if "command" not in config and not (image.container.get("entrypoint") or image.container.get("cmd")):
        raise SpecError(f"image {request.image!r} has no command of its own to run",
                        hint=f"give one: virtkit run {request.image} -- COMMAND")  # fmt: skip
    image_dir = root / "images" / str(data["fingerprint"])
    one = OneShot(paths.dir.name, _uuid4(), request.cpus, request.memory, config)
    shift = idmap.allocate(one, paths).shift  # its own ids, as any container's
    if shift is not None:  # its root (no host root) must enter the directory to reach its rootfs
        os.chown(paths.dir, 0, shift.gid)
    spec = build_spec(one, image, image_dir, paths, shift)
    return OneShotPlan(spec, image_dir / image.files[ROOTFS], container_id(one))


def _answer(code: int, error: str) -> int:
    """The command's exit status, or a ToolError when it never ran because runc failed."""
    if error and code != 0:
        raise ToolError(f"the container could not start: {error}")
    return code


def _registered(root: Path, name: str) -> bool:
    """Whether an instance named `name` exists (the store itself when the quick look cannot tell)."""
    found = peek.instance_exists(root, name)
    if found is not None:
        return found
    from virtkit.model import InstanceRecord
    from virtkit.store import open_store

    with open_store(root) as store:
        return store.find(InstanceRecord, name) is not None


def _full_image(root: Path, ref: str) -> dict[str, Any]:
    """The image `ref` names, found by the full image store: the look-up that says why it is not
    there (not found, ambiguous), for when the quick one found nothing."""
    from virtkit.ops.images import image_store
    from virtkit.store import open_store

    with open_store(root) as store:
        data: dict[str, Any] = image_store(root, store).resolve(ref).model_dump(mode="json")
    return data


def _run_registered(root: Path, request: RunRequest, config: dict[str, str]) -> int:
    """`virtkit run` without --rm: an ordinary instance, run in the foreground, left stopped."""
    from virtkit.model import InstanceKind
    from virtkit.ops.lifecycle import Lifecycle, Request
    from virtkit.store import open_store

    name = validate_name(request.name) if request.name else f"run-{os.urandom(4).hex()}"
    with open_store(root) as store:
        lifecycle = Lifecycle(root, store)
        wanted = Request(image=request.image, name=name, kind=InstanceKind.CONTAINER, cpus=request.cpus,
                         memory=request.memory, config=config)  # fmt: skip
        _record, runtime = lifecycle.create(wanted)
        try:
            spec = runtime.config["spec"]
            foreground.find_command(Path(runtime.config["lower"]), spec["args"][0], tuple(spec["env"]))
        except BaseException:
            lifecycle.delete(name)
            raise
        code, error = lifecycle.run_foreground(name)
    return _answer(code, error)


def _uuid4() -> str:
    """A random (version 4) UUID, as uuid.uuid4() makes, without the import (`uuid` loads `platform`)."""
    raw = bytearray(os.urandom(16))
    raw[6], raw[8] = (raw[6] & 0x0F) | 0x40, (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
