"""The `virtkit` command run as a subprocess for tests, with a hang made readable: past its timeout
the command gets SIGABRT, which Python's faulthandler (enabled in its environment) answers by
writing every thread's stack to stderr; the test then fails with those stacks instead of a bare
TimeoutExpired."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence

STACKS_WAIT = 5.0


class CommandHung(AssertionError):
    """The command did not end within its timeout; the message holds its stacks and output."""


def run(argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """As subprocess.run(argv, capture_output=True, text=True, check=False), the environment
    given (or this one) with PYTHONFAULTHANDLER=1."""
    full_env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(list(argv), stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=full_env) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                out, err = proc.communicate(timeout=STACKS_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise CommandHung(f"{' '.join(argv)} did not end within {timeout:g} s; its stacks and "
                              f"output:\n--- stderr ---\n{err}\n--- stdout ---\n{out[-4000:]}") from None
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
