"""What `qemu-img info` and `qemu-img check` say about an untrusted disk image, and whether to take it.

Both run with an explicit `-f FORMAT` (QEMU never probes) under CPU, memory and time limits
(`limits.INSPECT`), reading the already-opened file through /dev/fd/N (see `source`). An image is
refused (RejectedError) when QEMU cannot read it, when its metadata refers to anything outside
itself — a backing file, an external data file, a `json:` pseudo-filename anywhere, a VMDK that is
not one self-referencing extent of type monolithicSparse or streamOptimized — when it is encrypted
or marked corrupt, when its virtual size is above the limit, and when `qemu-img check` finds
corruption (QEMU 7.2 checks qcow2, vmdk, vdi and vhdx; vpc and raw have no check). Leaked
clusters, which waste space but lose nothing, are accepted.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from virtkit.errors import RejectedError, ToolError
from virtkit.images.detect import described, printable
from virtkit.images.limits import INSPECT, Limits, run_limited
from virtkit.units import GiB, format_size

log = logging.getLogger(__name__)

CHECKABLE = frozenset({"qcow2", "vmdk", "vdi", "vhdx"})
SINGLE_FILE_VMDK = ("monolithicSparse", "streamOptimized")

# Keys of `qemu-img info` output (at any depth) that name another file the image depends on.
_REFERENCE_KEYS = frozenset(
    {"backing-filename", "full-backing-filename", "backing-filename-format", "backing-image", "data-file"}
)
_SELF_CONTAINED = "virtkit imports only self-contained images; flatten it first where its other files are"

_REPEATED_OPEN = re.compile(r"(Could not open '[^']*': )\1+")

# qemu-img check exit codes.
_CHECK_OK, _CHECK_FAILED, _CHECK_CORRUPT, _CHECK_LEAKS = 0, 1, 2, 3


@dataclass(frozen=True)
class DiskInfo:
    """The parts of `qemu-img info` an import uses."""

    format: str
    virtual_size: int
    actual_size: int
    details: dict[str, Any] = field(default_factory=dict)  # the format-specific data


def read_info(
    filename: str, fmt: str, *, name: str, max_virtual_size: int, pass_fds: Sequence[int] = ()
) -> DiskInfo:
    """Run `qemu-img info` on `filename` (as QEMU should open it) and validate the answer.

    `name` is how messages call the file. Raises RejectedError for an unreadable or refused image.
    """
    argv = ["qemu-img", "info", "--output=json", "-f", fmt, filename]
    what = f"reading {name}"
    try:
        done = run_limited(argv, limits=INSPECT, what=what, pass_fds=pass_fds, rename={filename: name})
    except ToolError as exc:
        raise unreadable(name, fmt, exc, what) from None
    try:
        data = json.loads(done.stdout)
    except ValueError:
        raise ToolError(f"qemu-img info on {name} printed no JSON", argv=argv) from None
    return validate_info(data, fmt, name=name, filename=filename, max_virtual_size=max_virtual_size)


def validate_info(data: Any, fmt: str, *, name: str, filename: str, max_virtual_size: int) -> DiskInfo:
    """Accept or refuse `qemu-img info --output=json` output `data` for an image of format `fmt`."""
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise RejectedError(f"qemu-img does not read {name} as {described(fmt)}")
    if "json:" in json.dumps(data):
        raise RejectedError(
            f"{name} refers to a json: pseudo-filename (which can make QEMU open any file or "
            "network resource)",
            hint=_SELF_CONTAINED,
        )
    for key, value in _items(data):
        if key in _REFERENCE_KEYS:
            what = "a backing file" if "backing" in key else "an external data file"
            raise RejectedError(f"{name} refers to {what} ({printable(str(value))!r})", hint=_SELF_CONTAINED)
    spec = data.get("format-specific", {}).get("data", {})
    if not isinstance(spec, dict):
        spec = {}
    if data.get("encrypted") or spec.get("encrypt"):
        raise RejectedError(f"{name} is encrypted; virtkit imports only unencrypted images")
    if spec.get("corrupt"):
        raise RejectedError(
            f"{name} is marked corrupt in its own header", hint="repair it: qemu-img check -r all"
        )
    if fmt == "vmdk":
        _check_vmdk(spec, name, filename)
    virtual_size = data.get("virtual-size")
    if not isinstance(virtual_size, int) or virtual_size <= 0:
        raise RejectedError(f"{name} has no usable virtual size ({virtual_size!r})")
    if virtual_size > max_virtual_size:
        raise RejectedError(
            f"{name} has a virtual size of {format_size(virtual_size)}, "
            f"above the limit of {format_size(max_virtual_size)}",
            hint="raise the import size limit if this is intended",
        )
    actual = data.get("actual-size")
    return DiskInfo(fmt, virtual_size, actual if isinstance(actual, int) else 0, spec)


def _items(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a JSON document, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key), value
            yield from _items(value)
    elif isinstance(node, list):
        for item in node:
            yield from _items(item)


def _check_vmdk(spec: dict[str, Any], name: str, filename: str) -> None:
    create_type = spec.get("create-type")
    if create_type not in SINGLE_FILE_VMDK:
        raise RejectedError(
            f"{name} is a VMDK of type {printable(str(create_type))}; virtkit imports single-file VMDKs only",
            hint="import a monolithicSparse or streamOptimized VMDK (as found in an OVA)",
        )
    extents = spec.get("extents")
    files = [e.get("filename") for e in extents if isinstance(e, dict)] if isinstance(extents, list) else []
    if files != [filename]:
        shown = ", ".join(printable(str(f)) for f in files) or "none"
        raise RejectedError(
            f"{name} is a VMDK whose extents are not just the file itself (extents: {shown})",
            hint="import a single-file VMDK",
        )


def check_image(
    filename: str, fmt: str, *, name: str, virtual_size: int, pass_fds: Sequence[int] = ()
) -> str:
    """Run `qemu-img check` where QEMU has one for `fmt`; RejectedError on corruption.

    Returns a one-line verdict for the record ("no errors", "3 leaked clusters", "not checked").
    """
    if fmt not in CHECKABLE:
        return "not checked (qemu-img has no check for this format)"
    # Checking walks every mapping table: allow more CPU for larger disks (2 TiB: ~42 s).
    limits = Limits(
        wall=INSPECT.wall * 2, cpu=INSPECT.cpu + virtual_size // (64 * GiB), memory=INSPECT.memory
    )
    argv = ["qemu-img", "check", "--output=json", "-f", fmt, filename]
    what = f"checking {name}"
    try:
        done = run_limited(
            argv,
            limits=limits,
            what=what,
            ok=(_CHECK_OK, _CHECK_FAILED, _CHECK_CORRUPT, _CHECK_LEAKS),
            pass_fds=pass_fds,
            rename={filename: name},
        )
    except ToolError as exc:
        raise unreadable(name, fmt, exc, what) from None
    report = _json_or_empty(done.stdout)
    first_error = next((line for line in done.stderr.splitlines() if line.strip()), "")
    if done.returncode == _CHECK_CORRUPT:
        count = report.get("corruptions", "some")
        raise RejectedError(
            f"{name} is corrupt or truncated: qemu-img check found {count} errors ({first_error})",
            hint="copy the image again from its source, or repair it there: qemu-img check -r all",
        )
    if done.returncode == _CHECK_FAILED:
        raise RejectedError(
            f"{name} could not be checked, it is probably corrupt or truncated: {first_error}",
            hint="copy the image again from its source",
        )
    leaks = report.get("leaks", 0)
    if done.returncode == _CHECK_LEAKS or leaks:
        log.info("%s: %s leaked clusters (harmless: space only)", name, leaks)
        return f"{leaks} leaked clusters (harmless)"
    return "no errors"


def _json_or_empty(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def unreadable(name: str, fmt: str, exc: ToolError, what: str) -> RejectedError:
    """The refusal for an image QEMU could not read (or that ran it out of a resource limit);
    `what` is the `run_limited` description the error's message starts with."""
    lines = [_REPEATED_OPEN.sub(r"\1", line.removeprefix("qemu-img: ")) for line in exc.stderr.splitlines()]
    lines = [printable(line, 300) for line in lines if line.strip()]
    limit_hit = exc.returncode is None or exc.returncode < 0 or " ran out of " in exc.message
    # The last line is "Could not open 'x': <reason>"; a line before it often says more. A limit
    # hit leaves no message: say which ("qemu-img ran out of CPU time (limit 10 s)").
    reason = "; ".join(lines[-2:]) if lines and not limit_hit else exc.message.removeprefix(f"{what}: ")
    return RejectedError(
        f"{name} cannot be read as {described(fmt)}: {reason}",
        hint="the image is corrupt, truncated or crafted; copy it again from its source",
    )
