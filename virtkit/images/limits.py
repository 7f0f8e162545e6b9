"""Running a tool on untrusted input under CPU-time, memory and wall-clock limits.

`qemu-img` parses image metadata that anyone may have crafted; a hostile header can make it spin or
allocate without bound. `run_limited` runs a tool under `prlimit` (util-linux: RLIMIT_CPU and
RLIMIT_AS set in the child before exec, so no `preexec_fn` in a threaded server), reads its stdout
and stderr as they come (stdout line by line to a callback, for progress; both capped in size), and
kills it at its wall-clock deadline. Failures become ToolError saying which limit was hit.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from virtkit.errors import ToolError
from virtkit.images.tools import require_tool, tail
from virtkit.units import GiB, format_size

log = logging.getLogger(__name__)

# Output kept from a tool: stdout (qemu-img info of an image with 65535 snapshots is a few MiB) and
# the end of stderr (a corrupt image can make `qemu-img check` print a line per cluster).
MAX_STDOUT = 32 * 1024 * 1024
STDERR_KEEP = 64 * 1024

# glibc reserves 64 MiB of address space per malloc arena (up to 8 per core): without a cap a
# multi-threaded qemu-img can exhaust RLIMIT_AS without using the memory.
_ENV = {"LC_ALL": "C", "MALLOC_ARENA_MAX": "2"}
_OUT_OF_MEMORY = re.compile(
    r"cannot allocate memory|failed to allocate|unable to allocate|out of memory", re.IGNORECASE
)


@dataclass(frozen=True)
class Limits:
    """Bounds for one run: `wall` seconds of real time, `cpu` seconds of CPU, `memory` bytes of
    address space."""

    wall: float
    cpu: int
    memory: int


# Reading an image's metadata (qemu-img info / check) needs little of anything.
INSPECT = Limits(wall=60.0, cpu=10, memory=1 * GiB)


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


class _Overrun(Exception):
    """The tool overran its wall-clock deadline or its output cap."""


def run_limited(
    argv: Sequence[str],
    *,
    limits: Limits,
    what: str,
    ok: Collection[int] = (0,),
    pass_fds: Sequence[int] = (),
    on_line: Callable[[str], None] | None = None,
    rename: Mapping[str, str] | None = None,
) -> Completed:
    """Run `argv` (argv[0] a tool name or path) under `limits` and return its output.

    Exit codes in `ok` are success. `on_line` receives each stdout line (split on CR or LF, as
    progress meters print). `pass_fds` are inherited by the tool. `rename` replaces strings in
    stderr (e.g. "/dev/fd/5" by the file's real name) so messages name what the user gave; stdout
    is returned as printed, for parsing.
    Raises HostCapabilityError when the tool or prlimit is missing, ToolError on failure.
    """
    tool = require_tool(argv[0])
    prlimit = require_tool("prlimit", "util-linux")
    full = [prlimit, f"--cpu={limits.cpu}:{limits.cpu + 1}", f"--as={limits.memory}", "--", tool, *argv[1:]]
    shown = [argv[0], *argv[1:]]
    log.debug("running %s (limits %s)", " ".join(shown), limits)
    deadline = time.monotonic() + limits.wall
    proc = subprocess.Popen(
        full,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=tuple(pass_fds),
        env={**os.environ, **_ENV},
    )
    try:
        out, err = _pump(proc, deadline, on_line)
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except (_Overrun, subprocess.TimeoutExpired) as exc:
        reason = str(exc) if isinstance(exc, _Overrun) else f"did not finish within {limits.wall:g} s"
        raise ToolError(f"{what}: {argv[0]} {reason}", argv=shown) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout, stderr = out.decode(errors="replace"), _renamed(err.decode(errors="replace"), rename)
    if proc.returncode not in ok:
        raise _failure(what, shown, proc.returncode, stderr or stdout, limits)
    return Completed(shown, proc.returncode, stdout, stderr)


def _pump(
    proc: subprocess.Popen[bytes], deadline: float, on_line: Callable[[str], None] | None
) -> tuple[bytes, bytes]:
    """Read stdout and stderr until both close, feeding stdout lines to `on_line`."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err, pending = bytearray(), bytearray(), b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Overrun("did not finish in time")
            for key, _ in sel.select(min(remaining, 1.0)):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                elif key.data == "err":
                    err += data
                    del err[:-STDERR_KEEP]
                else:
                    out += data
                    if len(out) > MAX_STDOUT:
                        raise _Overrun(f"printed more than {format_size(MAX_STDOUT)}")
                    if on_line is not None:
                        pending = _lines(pending + data, on_line)
    return bytes(out), bytes(err)


def _lines(data: bytes, on_line: Callable[[str], None]) -> bytes:
    """Feed every complete line of `data` to `on_line`; return the incomplete rest."""
    *complete, rest = re.split(rb"[\r\n]", data)
    for line in complete:
        if line.strip():
            on_line(line.decode(errors="replace"))
    return rest


def _renamed(text: str, rename: Mapping[str, str] | None) -> str:
    for old, new in (rename or {}).items():
        text = text.replace(old, new)
    return text


def _failure(what: str, argv: list[str], code: int, output: str, limits: Limits) -> ToolError:
    err = tail(output)
    if code == -signal.SIGXCPU:
        reason = f"ran out of CPU time (limit {limits.cpu} s)"
    elif _OUT_OF_MEMORY.search(err):
        reason = f"ran out of memory (limit {format_size(limits.memory)})"
    elif code < 0:
        reason = f"was killed by signal {-code}"
    else:
        last = err.splitlines()[-1] if err else "no message"
        reason = f"failed (exit {code}): {last}"
    return ToolError(f"{what}: {argv[0]} {reason}", argv=argv, returncode=code, stderr=err)
