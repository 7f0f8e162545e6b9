"""Whether running containers can move live: CRIU (checkpoint/restore in userspace) installed and
passing its own `criu check` on this kernel. Without it `virtkit move --live` of a container says
so and moves it cold."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from virtkit.host.checks import Check, Status

CHECK_ID = "containers.live-migration"
CRIU_TIMEOUT = 5.0

Which = Callable[[str], str | None]


def criu_works(which: Which) -> tuple[bool, str]:
    """(works, why not): `criu check` run once, bounded."""
    path = which("criu")
    if path is None:
        return False, "CRIU is not installed"
    try:
        done = subprocess.run([path, "check"], capture_output=True, text=True, timeout=CRIU_TIMEOUT,
                              check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"`criu check` failed to run: {exc}"
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        return False, f"`criu check` fails on this kernel: {said[-1] if said else f'exit {done.returncode}'}"
    return True, ""


def criu_check(which: Which) -> Check:
    works, why = criu_works(which)
    if works:
        return Check(CHECK_ID, Status.PASS, "running containers can move live (CRIU works)")
    return Check(CHECK_ID, Status.INFO, f"running containers move cold, not live: {why}",
                 remedy="apt-get install criu, on a kernel it supports (`criu check` says)")  # fmt: skip
