"""A container run in the foreground (`virtkit run`): `runc run` with the caller's stdio, no conmon.

The caller waits for the command anyway, so a monitor process would only add a fork and a
handshake: runc itself is the container's parent, forwards the signals it receives (Ctrl-C reaches
the command, not virtkit), proxies a terminal when the spec asks for one, and removes the container
and its cgroup when the command ends. runc's own failures go to a JSON log beside the bundle, so
they can be told from the command's exit status.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path
from typing import Any

from virtkit.drivers.base import InstancePaths
from virtkit.drivers.oci import rootfs
from virtkit.drivers.oci.inroot import resolve
from virtkit.drivers.oci.plan import ContainerFiles
from virtkit.drivers.oci.runtime import Runc
from virtkit.errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    HostCapabilityError,
    ToolError,
)

# Set by the warm runner: Ctrl-C and window changes come from the client, not from runc's terminal.
FORWARD_ALL = False


def run_bundle(
    config: dict[str, Any], lower: Path, paths: InstancePaths, runc: Runc, cid: str,
    extra: tuple[Path, ...] = (),
) -> tuple[int, str]:  # fmt: skip
    """Make the container's files in `paths.dir`, mount its rootfs over `lower` (and a linked
    clone's layers, `extra`), run `config` (an OCI config.json) until its command ends and
    unmount: (exit status, runc's own error or "")."""
    files = ContainerFiles(paths)
    layers = rootfs.Layers(lower, files.upper, files.work, files.merged, extra=extra)
    if not files.upper.exists():  # a one-shot container: made now (an instance's, at its create)
        rootfs.prepare(layers)
    files.bundle.mkdir(mode=0o755, exist_ok=True)
    files.config.write_text(json.dumps(config))  # a fresh directory: nobody reads it half-written
    rootfs.mount(layers)
    try:
        return run(runc, files.bundle, cid)
    finally:
        rootfs.unmount(files.merged)


def run(runc: Runc, bundle: Path, cid: str) -> tuple[int, str]:
    """Run the container of `bundle` until its command ends: (exit status, runc's error or "")."""
    log = bundle / "oci-log"
    return _attached(runc, log, ["run", "--bundle", str(bundle), cid])


def exec_in(runc: Runc, cid: str, argv: list[str], *, tty: bool, log: Path) -> int:
    """Run `argv` in the running container `cid` with the caller's stdio (and a terminal with
    `tty`); its exit status. A command the container lacks is a CommandNotFoundError."""
    code, error = _attached(runc, log, ["exec", *(["--tty"] if tty else []), cid, *argv])
    if error and ("executable file not found" in error or "no such file or directory" in error):
        raise CommandNotFoundError(f"{argv[0]}: command not found in the instance",
                                   hint="give the full path of a command it has, e.g. /bin/sh")  # fmt: skip
    if error and code != 0:
        raise ToolError(f"runc exec failed: {error}")
    return code


def _attached(runc: Runc, log: Path, args: list[str]) -> tuple[int, str]:
    """Run runc with the caller's stdio until it ends: (its exit status, its logged error or "")."""
    log.unlink(missing_ok=True)
    argv = [runc.binary, "--root", str(runc.state_dir), "--log", str(log), "--log-format", "json", *args]
    try:  # posix_spawn: the subprocess module costs more to import than the spawn itself
        # SIGPIPE and SIGXFSZ back to their defaults, as subprocess's restore_signals does: Python
        # ignores them, and what is ignored stays ignored across exec, in runc and in the command.
        pid = os.posix_spawn(argv[0], argv, os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    except FileNotFoundError:
        raise HostCapabilityError(f"{runc.binary} is not installed", hint="apt-get install runc") from None

    # Handled only now, so runc starts with the default handlers. Ctrl-C reaches runc from the
    # terminal itself; SIGTERM/SIGHUP sent to virtkit are passed on. runc hands them to the command,
    # and virtkit waits for its answer instead of dying first and leaving the rootfs mounted.
    def forward(number: int, _frame: object) -> None:
        os.kill(pid, number)

    forwarded = [signal.SIGTERM, signal.SIGHUP]
    if FORWARD_ALL:  # the warm runner (cli/runner.py): the terminal's signals reach the client only
        forwarded += [signal.SIGINT, signal.SIGWINCH]
    previous = {} if FORWARD_ALL else {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    previous.update({s: signal.signal(s, forward) for s in forwarded})
    try:
        _pid, status = os.waitpid(pid, 0)  # retried by Python when a forwarded signal interrupts it
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    code = os.waitstatus_to_exitcode(status)
    return (128 - code if code < 0 else code), _error(log)


def _error(log: Path) -> str:
    """The last error runc logged (its own failure, not the command's), or ""."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            entry: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg", ""))
    return ""


def find_command(
    rootfs: Path, command: str, env: tuple[str, ...], where: str = "the image", *, live: bool = False
) -> None:
    """CommandNotFoundError unless `command` names a file in `rootfs` (by PATH when it has no slash),
    CommandNotExecutableError when what it names cannot be executed; symlinks are followed inside
    `rootfs`, never on the host. A clear answer before anything runs, as a shell would give it."""
    if "/" in command:
        candidates = [command if command.startswith("/") else "/" + command]
    else:
        path = next((e[5:] for e in env if e.startswith("PATH=")), "/usr/bin:/bin")
        candidates = [f"{d.rstrip('/')}/{command}" for d in path.split(":") if d.startswith("/")]
    unusable = None
    for candidate in candidates:
        mode = _live_mode(rootfs, candidate) if live else _mode(rootfs, candidate)
        if mode is None:
            continue
        if stat.S_ISREG(mode) and mode & 0o111:
            return
        unusable = unusable or mode
    if unusable is not None:
        why = "is a directory" if stat.S_ISDIR(unusable) else "is not executable"
        raise CommandNotExecutableError(f"{command}: {why}", hint="give the path of an executable file")
    hint = "give the full path of a command it has, e.g. /bin/sh"
    raise CommandNotFoundError(f"{command}: command not found in {where}", hint=hint)


def _mode(rootfs: Path, path: str) -> int | None:
    """The mode of `path` in an image's tree (static: nobody changes it while we look)."""
    found = resolve(rootfs, path)
    try:
        return os.stat(found).st_mode if found is not None else None
    except OSError:
        return None


def _live_mode(rootfs: Path, path: str) -> int | None:
    """The mode of `path` in a running container's tree, resolved by the kernel inside it (the
    container may change its links while we look: openat2 RESOLVE_IN_ROOT leaves it no window)."""
    from virtkit.storage.openat2 import openat2

    try:
        root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = openat2(root, path, os.O_PATH)
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        return os.fstat(fd).st_mode
    finally:
        os.close(fd)
