"""`virtkit file push|pull`: copying one file into an instance, or out of it.

The op checks what the request says before anything is touched (an absolute path naming a file,
ids and mode in range, a readable local file), finds the instance, holds its lock for the whole
copy (a stop or delete waits for it) and checks its live state: a container's files can be reached
in any state (its driver mounts a stopped one's root filesystem for the duration), a VM's only
while it runs, since they go through its guest agent. The driver does the copy in chunks; this
layer owns the local side: a pulled file appears under its name only once complete (written to a
temporary name in the same directory, then renamed), and a failed pull leaves nothing.

Local errors are told as such ("cannot read local file ..."), so what a driver reports is always
about the instance's side.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from virtkit.drivers.base import ByteSink, ByteSource, Driver, InstancePaths, get_driver
from virtkit.errors import SpecError, StateError, VirtkitError
from virtkit.model import InstanceKind, InstanceRecord, InstanceState, validate_name
from virtkit.ops.lifecycle import DriverFor
from virtkit.store import Store

log = logging.getLogger(__name__)

MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown(2): not an id
DEFAULT_MODE = 0o644
# Kinds whose files can be reached while the instance is stopped (a container's root filesystem
# is on this host; a VM's disk is reached only through its running guest's agent).
OFFLINE_KINDS = frozenset({InstanceKind.CONTAINER})


@dataclass(frozen=True)
class Transfer:
    """What one push or pull copied."""

    instance: str
    path: str
    size: int
    local: str  # the local file, or "-" for stdin/stdout

    def to_dict(self) -> dict[str, object]:
        return {"instance": self.instance, "path": self.path, "bytes": self.size, "local": self.local}


def check_path(path: str) -> str:
    """`path` if it is an absolute path naming a file inside an instance; SpecError otherwise."""
    if not path.startswith("/"):
        raise SpecError(
            f"the path inside the instance must be absolute, not {path!r}",
            hint=f"write it from the root, e.g. /{path.lstrip('./') or 'etc/hosts'}",
        )
    if "\0" in path:
        raise SpecError("a path cannot hold a NUL byte")
    if path.endswith("/") or path.rsplit("/", 1)[1] in (".", ".."):
        raise SpecError(f"{path} names a directory, not a file", hint="name the file itself, e.g. /etc/hosts")
    return path


def parse_mode(text: str) -> int:
    """A permission mode written in octal (0644, 644, 0o755, 4755) -> int; SpecError otherwise."""
    digits = text[2:] if text.lower().startswith("0o") else text
    if not digits or any(char not in "01234567" for char in digits) or int(digits, 8) > 0o7777:
        raise SpecError(f"invalid mode {text!r}: expected octal permission bits, e.g. 0644 or 0755")
    return int(digits, 8)


def _check_id(value: int, what: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise SpecError(f"invalid {what} {value}: expected 0 to {MAX_ID}")
    return value


class _Reader:
    """The local source: its OSErrors said as the local side's, its bytes counted."""

    def __init__(self, stream: ByteSource, label: str) -> None:
        self.stream, self.label, self.count = stream, label, 0

    def read(self, size: int, /) -> bytes:
        try:
            data = self.stream.read(size)
        except OSError as exc:
            raise VirtkitError(f"cannot read {self.label}: {exc.strerror or exc}") from exc
        self.count += len(data)
        return data


class _Writer:
    """The local destination, its OSErrors said as the local side's (but for a closed pipe, which
    the CLI ends quietly on, as `virtkit file pull c1/log - | head` should)."""

    def __init__(self, stream: ByteSink, label: str) -> None:
        self.stream, self.label = stream, label

    def write(self, data: bytes, /) -> object:
        try:
            return self.stream.write(data)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise VirtkitError(f"cannot write {self.label}: {exc.strerror or exc}") from exc

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            try:
                flush()
            except OSError as exc:
                raise VirtkitError(f"cannot write {self.label}: {exc.strerror or exc}") from exc


def _known_size(stream: object) -> int | None:
    """How many bytes are left in `stream` when it is a regular file (else None: a pipe, a tty)."""
    try:
        info = os.fstat(stream.fileno())  # type: ignore[attr-defined]
        if not stat.S_ISREG(info.st_mode):
            return None
        return max(0, info.st_size - int(stream.tell()))  # type: ignore[attr-defined]  # buffered
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def _local_source(source: Path | ByteSource) -> Iterator[tuple[_Reader, int | None, str]]:
    """The source as a reader, its size when known, and its name for messages."""
    if not isinstance(source, Path):
        yield _Reader(source, "standard input"), _known_size(source), "-"
        return
    try:
        stream = source.open("rb")
    except FileNotFoundError:
        raise SpecError(f"local file {source} does not exist") from None
    except IsADirectoryError:
        raise SpecError(f"local file {source} is a directory: only files can be pushed") from None
    except OSError as exc:
        raise SpecError(f"cannot read local file {source}: {exc.strerror or exc}") from None
    with stream:
        if stat.S_ISDIR(os.fstat(stream.fileno()).st_mode):
            raise SpecError(f"local file {source} is a directory: only files can be pushed")
        yield _Reader(stream, f"local file {source}"), _known_size(stream), str(source)


def _destination(dest: Path, path: str) -> Path:
    """Where a pull into `dest` lands: into it when it is a directory (under the file's own name),
    through it when it is a symlink (this host's, so followed as cp does)."""
    if dest.is_dir():
        dest = dest / path.rsplit("/", 1)[1]
    if dest.is_symlink():
        dest = Path(os.path.realpath(dest))
    if not dest.parent.is_dir():
        raise SpecError(f"local directory {dest.parent} does not exist")
    return dest


@contextlib.contextmanager
def _local_sink(dest: Path | ByteSink, path: str) -> Iterator[tuple[_Writer, str]]:
    """A writer for the destination; a file appears under its name only once complete."""
    if not isinstance(dest, Path):
        yield _Writer(dest, "standard output"), "-"
        return
    dest = _destination(dest, path)
    label = f"local file {dest}"
    direct = dest.exists() and not dest.is_file()  # a device or FIFO (/dev/null): written into, as cp does
    target = dest if direct else dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.virtkit-pull")
    flags = os.O_WRONLY | (0 if direct else os.O_CREAT | os.O_EXCL)
    try:
        fd = os.open(target, flags | os.O_CLOEXEC | os.O_NOCTTY, 0o666)  # the umask has its say
    except OSError as exc:
        raise SpecError(f"cannot write {label}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            writer = _Writer(stream, label)
            yield writer, str(dest)
            writer.flush()
        if not direct:
            try:
                os.replace(target, dest)
            except OSError as exc:
                raise VirtkitError(f"cannot write {label}: {exc.strerror or exc}") from None
    finally:
        if not direct:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()


class Files:
    """`file push` and `file pull` over one state root."""

    def __init__(self, root: Path, store: Store, drivers: DriverFor = get_driver) -> None:
        self.root = root
        self.store = store
        self.drivers = drivers

    def push(
        self, name: str, path: str, source: Path | ByteSource, *,
        uid: int = 0, gid: int = 0, mode: int = DEFAULT_MODE,
    ) -> Transfer:  # fmt: skip
        """Copy `source` (a local file, or a stream such as stdin) to `path` inside instance `name`,
        owned uid:gid as the instance sees them, with permission bits `mode`."""
        path = check_path(path)
        _check_id(uid, "uid")
        _check_id(gid, "gid")
        if not 0 <= mode <= 0o7777:
            raise SpecError(f"invalid mode {mode:o}: expected permission bits up to 7777")
        record = self.store.get(InstanceRecord, validate_name(name))
        driver, paths = self.drivers(record.kind), InstancePaths.of(self.root, record.name)
        with _local_source(source) as (reader, size, local), self.store.lock("instance", record.name):
            self._check_state(record, driver, paths)
            written = driver.push_file(record, paths, path, reader, size=size, uid=uid, gid=gid, mode=mode)
        log.info("%s: pushed %d bytes to %s (%d:%d %04o)", record.name, written, path, uid, gid, mode)
        return Transfer(record.name, path, written, local)

    def pull(self, name: str, path: str, dest: Path | ByteSink) -> Transfer:
        """Copy the regular file `path` inside instance `name` to `dest` (a local file or directory,
        or a stream such as stdout)."""
        path = check_path(path)
        record = self.store.get(InstanceRecord, validate_name(name))
        driver, paths = self.drivers(record.kind), InstancePaths.of(self.root, record.name)
        with self.store.lock("instance", record.name):
            self._check_state(record, driver, paths)
            with _local_sink(dest, path) as (writer, local):
                copied = driver.pull_file(record, paths, path, writer)
        log.info("%s: pulled %d bytes from %s", record.name, copied, path)
        return Transfer(record.name, path, copied, local)

    @staticmethod
    def _check_state(record: InstanceRecord, driver: Driver, paths: InstancePaths) -> None:
        state = driver.status(record, paths).state
        if state is InstanceState.RUNNING or record.kind in OFFLINE_KINDS:
            return
        why = "a VM's files are copied by its guest agent, which runs only while the VM does"
        if state is InstanceState.PAUSED:
            raise StateError(f"instance {record.name!r} is paused: resume it first",
                             hint=f"{why}: virtkit resume {record.name}")  # fmt: skip
        raise StateError(f"instance {record.name!r} is {state.value}: start it first",
                         hint=f"{why}: virtkit start {record.name}")  # fmt: skip
