"""Copying one file into a VM's guest or out of it, through the guest's agent, in chunks.

Two links, chosen by the agent's port (as `exec` chooses):

- qemu-guest-agent (Debian images): guest-file-open, guest-file-write and guest-file-read (the
  data base64-encoded in the JSON, CHUNK bytes per call, on one connection) and guest-file-close.
- the tiny image's agent has no file commands, but its EXEC carries bytes exactly both ways
  (stdin and stdout, up to 16 MiB each): a chunk is written by ``dd of=FILE seek=OFFSET`` fed on
  stdin, and read by ``dd if=FILE skip=OFFSET count=CHUNK`` on stdout. Nothing new runs in the
  guest, so tiny images built before this work too.

What neither agent has a command for runs as fixed ``sh -c`` scripts taking the paths as
arguments (never parsed by a shell): before a push, check the directory and make a temporary
file beside the target (mktemp: new, mode 0600); after it, chown, chmod and ``mv -fT`` it over the
target (atomic, but for a symlink there, which is removed first: replaced, not followed); on any
failure, remove it. Before a pull: the path must be a regular file (after symlinks, which the
guest resolves in its own filesystem), of at most MAX_SIZE bytes.

Files are limited to MAX_SIZE: under emulation (TCG) an agent moves a few MiB per second, so a
bigger file is better copied over the network or on a disk image; the check is made before any
byte is sent when the size is known, and while sending otherwise (a pipe).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from virtkit.drivers.base import ByteSink, ByteSource, ExecResult
from virtkit.drivers.qemu.agent import QGA_PORT, exec_in_guest
from virtkit.drivers.qemu.channel import SYNC_TIMEOUT, TRANSFER_TIMEOUT, Link, agent_errors, connect
from virtkit.drivers.qemu.guestagent import HINT as QGA_HINT
from virtkit.drivers.qemu.guestagent import Qga, QgaError, run_program
from virtkit.errors import ConflictError, NotFoundError, SpecError, ToolError, VirtkitError
from virtkit.units import MiB, format_size

CHUNK = 8 * MiB  # an EXEC of the tiny agent costs about a second under TCG, whatever it carries
MAX_SIZE = 128 * MiB
COMMAND_TIMEOUT = 60.0  # one chunk or one script in the guest (emulated guests are slow)
TOO_BIG_HINT = "copy bigger files over the network (scp), or on a disk image"

# Exit 3: the directory is missing; 4: the target is a directory.
PREPARE = r"""p=$1 d=${1%/*}
[ -n "$d" ] || d=/
[ -d "$d" ] || { echo "no such directory: $d" >&2; exit 3; }
if [ -d "$p" ] && [ ! -L "$p" ]; then exit 4; fi
exec mktemp "$d/.virtkit-push.XXXXXX"
"""
# busybox's mv -T follows a symlink to a directory at the target: such a link is removed first.
COMMIT = r"""chown "$3:$4" "$1" && chmod "$5" "$1" &&
	{ [ ! -L "$2" ] || rm -f "$2"; } && mv -fT "$1" "$2" && exit 0
rm -f "$1"
exit 1
"""
# Exit 3: missing; 4: a directory; 5: not a regular file (its kind on stdout).
CHECK = r"""[ -e "$1" ] || exit 3
[ -d "$1" ] && exit 4
[ -f "$1" ] || { stat -L -c %F "$1"; exit 5; }
exec stat -L -c %s "$1"
"""


class GuestLink(Protocol):
    """What a push or pull needs of an agent."""

    def run(self, argv: Sequence[str]) -> ExecResult: ...

    def write_file(self, path: str, chunks: Iterable[bytes]) -> None:
        """Write the chunks, in order, to the (new, empty) file `path`."""

    def read_file(self, path: str) -> Iterator[bytes]:
        """The bytes of the file `path`, in chunks."""


def _failed(what: str, result: ExecResult) -> ToolError:
    said = result.stderr.decode(errors="replace").strip().splitlines()
    return ToolError(f"{what} failed in the guest (exit {result.exit_code})"
                     + (f": {said[-1]}" if said else ""), stderr="\n".join(said[-20:]))  # fmt: skip


class TinyLink:
    """The tiny image's agent: every step one EXEC (its own connection)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> ExecResult:
        return exec_in_guest(self.socket_path, argv, COMMAND_TIMEOUT, stdin=stdin)

    def write_file(self, path: str, chunks: Iterable[bytes]) -> None:
        offset = 0
        for chunk in chunks:
            argv = ["dd", f"of={path}", "bs=65536", f"seek={offset}", "oflag=seek_bytes", "conv=notrunc"]
            result = self.run(argv, stdin=chunk)
            if result.exit_code != 0:
                raise _failed(f"writing {path}", result)
            offset += len(chunk)

    def read_file(self, path: str) -> Iterator[bytes]:
        offset = 0
        while True:
            argv = ["dd", f"if={path}", "bs=65536", f"skip={offset}", f"count={CHUNK}",
                    "iflag=skip_bytes,count_bytes"]  # fmt: skip
            result = self.run(argv)
            if result.exit_code != 0:
                raise _failed(f"reading {path}", result)
            if result.stdout:
                yield result.stdout
            if len(result.stdout) < CHUNK:
                return
            offset += len(result.stdout)


class QgaLink:
    """qemu-guest-agent, over one synchronised connection. Each call's socket errors are its own
    (not the local side's: a closed stdout pipe stays a BrokenPipeError, ended quietly)."""

    def __init__(self, qga: Qga) -> None:
        self.qga = qga

    def run(self, argv: Sequence[str]) -> ExecResult:
        with agent_errors(argv, time.monotonic(), QGA_HINT):
            return run_program(self.qga, argv, COMMAND_TIMEOUT, b"")

    def _call(self, command: str, arguments: dict[str, Any]) -> Any:
        try:
            with agent_errors([command], time.monotonic(), QGA_HINT):
                return self.qga.call(command, arguments, time.monotonic() + TRANSFER_TIMEOUT)
        except QgaError as error:
            raise ToolError(f"qemu-guest-agent refused {command}: {error.desc}") from None

    @contextlib.contextmanager
    def _opened(self, path: str, mode: str) -> Iterator[int]:
        handle = self._call("guest-file-open", {"path": path, "mode": mode})
        if not isinstance(handle, int):
            raise ToolError(f"qemu-guest-agent sent an unexpected guest-file-open reply: {handle!r}")
        try:
            yield handle
        finally:
            with contextlib.suppress(VirtkitError):
                self._call("guest-file-close", {"handle": handle})

    def write_file(self, path: str, chunks: Iterable[bytes]) -> None:
        with self._opened(path, "w") as handle:
            for chunk in chunks:
                data = base64.b64encode(chunk).decode()
                done = self._call("guest-file-write", {"handle": handle, "buf-b64": data})
                if not isinstance(done, dict) or done.get("count") != len(chunk):
                    raise ToolError(f"qemu-guest-agent wrote {done!r} of {len(chunk)} bytes to {path}")

    def read_file(self, path: str) -> Iterator[bytes]:
        with self._opened(path, "r") as handle:
            while True:
                got = self._call("guest-file-read", {"handle": handle, "count": CHUNK})
                if not isinstance(got, dict):
                    raise ToolError(f"qemu-guest-agent sent an unexpected guest-file-read reply: {got!r}")
                try:
                    data = base64.b64decode(got.get("buf-b64") or "", validate=True)
                except (binascii.Error, TypeError):
                    raise ToolError("qemu-guest-agent sent undecodable file data") from None
                if data:
                    yield data
                if got.get("eof") or not data:
                    return


@contextlib.contextmanager
def open_link(port: str, socket_path: Path) -> Iterator[GuestLink]:
    """The link to the agent on `port` (its image's "agent_port"), for one push or pull."""
    if port != QGA_PORT:
        yield TinyLink(socket_path)
        return
    with connect(socket_path, "guest agent") as sock:
        qga = Qga(Link(sock))
        with agent_errors(["guest-sync-delimited"], time.monotonic(), QGA_HINT):
            qga.sync(SYNC_TIMEOUT)
        yield QgaLink(qga)


def _too_big(path: str, size: int, vm: str) -> SpecError:
    return SpecError(f"{path} is {format_size(size)}: files copied through {vm}'s guest agent are "
                     f"limited to {format_size(MAX_SIZE)}", hint=TOO_BIG_HINT)  # fmt: skip


def _limited(source: ByteSource, what: str, vm: str) -> Iterator[bytes]:
    """The source in CHUNK pieces; SpecError once it passes MAX_SIZE."""
    total = 0
    while True:
        parts, got = [], 0
        while got < CHUNK and (part := source.read(CHUNK - got)):  # a pipe gives less at a time
            parts.append(part)
            got += len(part)
        if not parts:
            return
        total += got
        if total > MAX_SIZE:
            raise _too_big(what, total, vm)
        yield b"".join(parts)


def push(link: GuestLink, vm: str, path: str, source: ByteSource, *, size: int | None,
         uid: int, gid: int, mode: int) -> int:  # fmt: skip
    """Write `source` at `path` in the guest, atomically, owned uid:gid with `mode`; bytes written."""
    where = f"{path} in {vm}"
    if size is not None and size > MAX_SIZE:
        raise _too_big("the file", size, vm)
    prepared = link.run(["sh", "-c", PREPARE, "sh", path])
    if prepared.exit_code == 3:
        raise NotFoundError(f"cannot write {where}: its directory does not exist")
    if prepared.exit_code == 4:
        raise ConflictError(f"{where} is a directory: a file cannot replace it",
                            hint="name a file inside it, e.g. DIR/NAME")  # fmt: skip
    temp = prepared.stdout.decode(errors="surrogateescape").strip()
    if prepared.exit_code != 0 or not temp.startswith("/"):
        raise _failed(f"making a temporary file beside {path}", prepared)
    counted = _Counted(source)
    try:
        link.write_file(temp, _limited(counted, "the file", vm))
        committed = link.run(["sh", "-c", COMMIT, "sh", temp, path, str(uid), str(gid), f"{mode:04o}"])
        if committed.exit_code != 0:
            raise _failed(f"setting the owner and mode of {path}", committed)
    except BaseException:
        with contextlib.suppress(VirtkitError):
            link.run(["rm", "-f", temp])
        raise
    return counted.count


class _Counted:
    def __init__(self, source: ByteSource) -> None:
        self.source, self.count = source, 0

    def read(self, size: int, /) -> bytes:
        data = self.source.read(size)
        self.count += len(data)
        return data


def pull(link: GuestLink, vm: str, path: str, sink: ByteSink) -> int:
    """Copy the regular file `path` in the guest to `sink`; bytes copied."""
    where = f"{path} in {vm}"
    checked = link.run(["sh", "-c", CHECK, "sh", path])
    kind = checked.stdout.decode(errors="replace").strip()
    if checked.exit_code == 3:
        raise NotFoundError(f"cannot read {where}: no such file or directory")
    if checked.exit_code in (4, 5):
        kind = "a directory" if checked.exit_code == 4 else f"not a regular file ({kind or 'unknown'})"
        raise SpecError(f"{where} is {kind}: only regular files can be pulled")
    if checked.exit_code != 0 or not kind.isdigit():
        raise _failed(f"looking at {path}", checked)
    if int(kind) > MAX_SIZE:
        raise _too_big(path, int(kind), vm)
    copied = 0
    for chunk in link.read_file(path):
        copied += len(chunk)
        if copied > MAX_SIZE:
            raise _too_big(path, copied, vm)
        sink.write(chunk)
    return copied
