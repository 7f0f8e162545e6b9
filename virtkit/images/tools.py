"""Running the external tools image builders and importers need, with failures made plain.

Every call has an explicit timeout. A tool that is not installed becomes a `HostCapabilityError`
naming the Debian package that provides it; a tool that fails or overruns its timeout becomes a
`ToolError` carrying the command line, the exit code and the tail of its stderr.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from virtkit.errors import HostCapabilityError, ToolError

log = logging.getLogger(__name__)

# How much of a failed tool's stderr is kept in the error (the end is where the reason is).
STDERR_TAIL = 2000

# The Debian package providing each tool builders use; named in the error when one is missing.
PACKAGES: dict[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "mkfs.ext4": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "busybox": "busybox-static",
    "debootstrap": "debootstrap",
    "zstd": "zstd",
    "skopeo": "skopeo",
    "umoci": "umoci",
}


def missing_tool(name: str, package: str | None = None) -> HostCapabilityError:
    """The error for a tool this host lacks."""
    package = package or PACKAGES.get(name, name)
    return HostCapabilityError(
        f"{name} is not installed on this host", hint=f"install it: apt-get install {package}"
    )


def require_tool(name: str, package: str | None = None) -> str:
    """The full path of tool `name`, or HostCapabilityError naming its Debian package."""
    found = shutil.which(name)
    if found is None:
        raise missing_tool(name, package)
    return found


def tail(text: str, limit: int = STDERR_TAIL) -> str:
    """The last `limit` characters of a tool's output, stripped."""
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def run_tool(
    argv: Sequence[str | Path],
    *,
    timeout: float,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    package: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion and return it (stdout and stderr as text).

    `what` says, for the error message, what the tool was doing ("unpacking the kernel package").
    `env` entries are added to the current environment. Raises HostCapabilityError when the tool
    is missing and ToolError when it fails, is killed or overruns `timeout` seconds.
    """
    args = [str(a) for a in argv]
    full_env = {**os.environ, **env} if env else None
    log.debug("running %s", " ".join(args))
    try:
        done = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        if cwd is not None and not cwd.is_dir():
            raise
        raise missing_tool(Path(args[0]).name, package) from None
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        raise ToolError(
            f"{what}: {args[0]} did not finish within {timeout:g} s",
            argv=args,
            stderr=tail(stderr or ""),
        ) from None
    except OSError as exc:
        raise ToolError(f"{what}: cannot run {args[0]}: {exc.strerror}", argv=args) from None
    if done.returncode != 0:
        err = tail(done.stderr or done.stdout)
        reason = err.splitlines()[-1] if err else "no message"
        raise ToolError(
            f"{what}: {args[0]} failed (exit {done.returncode}): {reason}",
            argv=args,
            returncode=done.returncode,
            stderr=err,
        )
    return done


# A Debian build can hold a cache entry for minutes; beyond half an hour the holder is stuck.
CACHE_LOCK_TIMEOUT = 1800.0


def cache_lock(cache: Path, name: str, timeout: float = CACHE_LOCK_TIMEOUT) -> AbstractContextManager[None]:
    """Hold the lock on one entry of the download/build cache (bounded wait, then BusyError naming
    the process that holds it); released by the kernel if the holder dies."""
    from virtkit.store.locks import hold

    return hold(cache / "locks", "cache", name, timeout)
