"""Running debootstrap: its command line, its progress, and the mounts it may leave behind.

The argv builder and the progress parser are pure so they are unit-tested on recorded output.
debootstrap mounts /proc and /sys (in a container, binds of /dev nodes too) inside the tree it
builds and unmounts them when it exits normally; a killed or timed-out run can leave them mounted.
`unmount_under` takes down anything mounted below a tree, and `remove_tree` refuses to delete a
tree that still has mounts below it (a recursive delete through a bind of /dev would hit the host).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from virtkit.errors import StoreError, ToolError
from virtkit.images.staged import Progress
from virtkit.images.tools import require_tool, run_tool, tail

log = logging.getLogger(__name__)

DEBOOTSTRAP_TIMEOUT = 1800.0  # a cold build of the full VM set takes ~2 min here; slow mirrors more
UMOUNT_TIMEOUT = 30.0
# "I: Retrieving libc6 2.36-9" / "I: Unpacking libc6:amd64..." (not "I: Unpacking the base system...")
_LINE = re.compile(
    r"^I: (?:(?P<get>Retrieving|Validating) (?P<pkg>[a-z0-9][a-z0-9+.-]+) \S+"
    r"|(?P<verb>Extracting|Unpacking|Configuring) (?P<name>[a-z0-9][a-z0-9+.-]+)(?::[a-z0-9-]+)?\.\.\.)$"
)
_PHASES = {
    "Retrieving": "downloading packages",
    "Validating": "downloading packages",
    "Extracting": "extracting core packages",
    "Unpacking": "unpacking packages",
    "Configuring": "configuring packages",
}


def debootstrap_argv(
    target: Path,
    *,
    release: str,
    debarch: str,
    mirror: str,
    include: Sequence[str],
    cache_dir: Path,
    keyring: Path | None = None,
) -> list[str]:
    """The debootstrap command line for a minbase tree with `include` added (pure)."""
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--arch={debarch}",
        "--merged-usr",
        f"--cache-dir={cache_dir}",
    ]
    if keyring is not None:
        argv.append(f"--keyring={keyring}")
    if include:
        argv.append("--include=" + ",".join(include))
    argv += [release, str(target), mirror]
    return argv


class DebootstrapProgress:
    """Turns debootstrap's "I: Verb package" lines into (phase, fraction) reports.

    debootstrap does not say how many packages it will handle; every package is announced once
    while downloading ("Retrieving", or only "Validating" when it comes from the cache), so that
    count is the total for the unpacking and configuring phases that follow.
    """

    def __init__(self) -> None:
        self.packages: set[str] = set()
        self.done: dict[str, int] = {}  # per phase, across debootstrap's required and base rounds

    def feed(self, line: str) -> tuple[str, float | None] | None:
        """The report for one output line, or None when the line says nothing new."""
        match = _LINE.match(line.strip())
        if match is None:
            return None
        verb = match["get"] or match["verb"]
        phase = _PHASES[verb]
        if verb in ("Retrieving", "Validating"):
            self.packages.add(match["pkg"])
            return f"debootstrap: {phase} ({len(self.packages)})", None
        self.done[phase] = self.done.get(phase, 0) + 1
        total = max(len(self.packages), 1)
        return f"debootstrap: {phase}", min(self.done[phase] / total, 1.0)


def run_debootstrap(argv: list[str], target: Path, *, progress: Progress, timeout: float) -> None:
    """Run debootstrap into `target`, reporting progress from its output lines.

    On failure the ToolError carries the tail of debootstrap's own log, where dpkg's reasons are.
    Whatever it left mounted below `target` is unmounted before returning or raising.
    """
    argv = [require_tool(argv[0]), *argv[1:]]
    parser = DebootstrapProgress()
    last: deque[str] = deque(maxlen=40)
    log.info("running %s", " ".join(argv))
    try:
        with subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", start_new_session=True,
        ) as proc:
            timed_out = threading.Event()

            def expire() -> None:
                timed_out.set()
                proc.kill()

            killer = threading.Timer(timeout, expire)
            killer.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    last.append(line.rstrip())
                    report = parser.feed(line)
                    if report is not None:
                        progress(*report)
                returncode = proc.wait()
            finally:
                killer.cancel()
                if proc.poll() is None:
                    proc.kill()
    finally:
        unmount_under(target)
    if returncode != 0:
        raise _failure(argv, returncode, list(last), target, timed_out=timed_out.is_set())


def _failure(
    argv: list[str], returncode: int, output: list[str], target: Path, *, timed_out: bool
) -> ToolError:
    logfile = target / "debootstrap" / "debootstrap.log"
    detail = "\n".join(output)
    if logfile.is_file():
        detail += "\n--- debootstrap.log ---\n" + logfile.read_text(errors="replace")[-4000:]
    errors = [line for line in output if line.startswith(("E:", "W: Failure"))]
    reason = errors[-1] if errors else (output[-1] if output else "no message")
    if timed_out:
        reason = "it did not finish in time"
    return ToolError(
        f"debootstrap failed (exit {returncode}): {reason}",
        argv=argv,
        returncode=returncode,
        stderr=tail(detail),
        hint="check that the Debian mirror is reachable and the package names exist in the release",
    )


def _unescape(field: str) -> str:
    """A mountinfo path field with its octal escapes (\\040 for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mounts_under(path: Path, mountinfo: str | None = None) -> list[Path]:
    """Mount points at or below `path`, deepest first (the order to unmount them)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    base = path.resolve() if path.exists() else path
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(_unescape(fields[4]))
        if point == base or base in point.parents:
            found.append(point)
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_under(path: Path) -> None:
    """Unmount everything mounted at or below `path`, deepest first; lazily, so a busy mount
    is detached at once. Raises StoreError if any mount remains."""
    for point in mounts_under(path):
        if point not in mounts_under(path):
            continue  # went with its parent
        log.warning("unmounting %s below %s", point, path)
        try:
            run_tool(["umount", "--lazy", point], timeout=UMOUNT_TIMEOUT, what=f"unmounting {point}",
                     package="mount")
        except ToolError as exc:
            log.warning("%s", exc)
    remaining = mounts_under(path)
    if remaining:
        raise StoreError(
            f"cannot unmount {', '.join(map(str, remaining))}",
            hint="unmount them by hand (umount -l PATH) before building again",
        )


def remove_tree(path: Path) -> None:
    """Delete a build tree, first unmounting anything below it; never deletes through a mount."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_under(path)
    shutil.rmtree(path)
