"""Running a command inside a build tree (chroot), with the kernel filesystems it needs.

Package scripts need /proc, a /dev with the usual character devices and a devpts; they must not
start services, and apt needs a resolv.conf that works on the build host. `chroot_session` sets all
of that up and, in every case (success, failure, timeout, Ctrl-C), takes it down again: the tree is
left with nothing mounted below it, and its own /etc/resolv.conf and /usr/sbin/policy-rc.d as
they were.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from virtkit.errors import ToolError
from virtkit.images.debootstrap import unmount_under
from virtkit.images.tools import run_tool

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0
# Character devices package scripts use: (name, major, minor).
_DEVICES = (
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
)
_POLICY_RC_D = "#!/bin/sh\n# virtkit image build: no service starts inside the build chroot\nexit 101\n"
CHROOT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
}


def _mount(stack: ExitStack, argv: list[str], target: Path) -> None:
    """Mount on `target` and have `stack` unmount it on the way out."""
    run_tool(["mount", *argv, target], timeout=MOUNT_TIMEOUT, what=f"mounting {target}", package="mount")
    stack.callback(_umount, target)


def _umount(target: Path) -> None:
    try:
        run_tool(["umount", target], timeout=MOUNT_TIMEOUT, what=f"unmounting {target}", package="mount")
    except ToolError as exc:  # busy (a leftover process): the lazy sweep after this one detaches it
        log.warning("%s", exc)


def _populate_dev(dev: Path) -> None:
    for name, major, minor in _DEVICES:
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        (dev / name).chmod(0o666)  # past the umask: apt runs gpgv as _apt, which writes to /dev/null
    (dev / "pts").mkdir()
    (dev / "shm").mkdir()
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        (dev / name).symlink_to(target)


@contextmanager
def _replaced(path: Path, content: str, mode: int) -> Iterator[None]:
    """`path` holds `content` for the duration, then is put back as it was (file, link or nothing)."""
    backup = path.with_name(path.name + ".virtkit-build")
    existed = path.exists() or path.is_symlink()
    if existed:
        path.rename(backup)
    try:
        path.write_text(content)
        path.chmod(mode)
        yield
    finally:
        path.unlink(missing_ok=True)
        if existed:
            backup.rename(path)


@contextmanager
def chroot_session(tree: Path) -> Iterator[None]:
    """Mount proc, a private /dev and devpts in `tree`; stop services starting; make DNS work."""
    with ExitStack() as stack:
        stack.callback(unmount_under, tree)  # last resort, runs last: nothing stays mounted below
        _mount(stack, ["-t", "proc", "proc"], tree / "proc")
        _mount(stack, ["-t", "tmpfs", "-o", "mode=0755,size=64m", "virtkit-dev"], tree / "dev")
        _populate_dev(tree / "dev")
        pts_options = "newinstance,ptmxmode=0666,mode=0620,gid=5"
        _mount(stack, ["-t", "devpts", "-o", pts_options, "devpts"], tree / "dev/pts")
        resolv = Path("/etc/resolv.conf")
        host_dns = resolv.read_text() if resolv.is_file() else ""
        stack.enter_context(_replaced(tree / "etc" / "resolv.conf", host_dns, 0o644))
        stack.enter_context(_replaced(tree / "usr" / "sbin" / "policy-rc.d", _POLICY_RC_D, 0o755))
        yield


def run_in_chroot(
    tree: Path, argv: Sequence[str], *, timeout: float, what: str, env: Mapping[str, str] | None = None
) -> str:
    """Run `argv` inside `tree` (within a `chroot_session`); its stdout, or ToolError."""
    variables = [f"{key}={value}" for key, value in {**CHROOT_ENV, **(env or {})}.items()]
    done = run_tool(["chroot", tree, "/usr/bin/env", "-i", *variables, *argv],
                    timeout=timeout, what=what, package="coreutils")
    return done.stdout
