"""OciRuntime.exec: a command the container lacks is exit 127 with one plain line, as a shell says
it (runc itself exits 255 with its own log line); every other result passes through untouched.
A stand-in runtime script prints what runc 1.1 and crun 1.8 print."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtkit.drivers.oci.runtime import OciRuntime

RUNC_NOT_IN_PATH = (
    'time="2026-01-01T00:00:00Z" level=error msg="exec failed: unable to start container process: '
    'exec: \\"nosuchcmd\\": executable file not found in $PATH"'
)
RUNC_NO_FILE = (
    'time="2026-01-01T00:00:00Z" level=error msg="exec failed: unable to start container process: '
    'exec: \\"/bin/nosuchcmd\\": stat /bin/nosuchcmd: no such file or directory"'
)
CRUN_NOT_IN_PATH = "executable file `nosuchcmd` not found in $PATH: No such file or directory"


def _runtime(tmp_path: Path, stderr: str, code: int) -> OciRuntime:
    script = tmp_path / "fake-runc"
    said = stderr.replace("'", "'\\''")
    script.write_text(f"#!/bin/sh\nprintf 'out\\n'\nprintf '%s\\n' '{said}' >&2\nexit {code}\n")
    script.chmod(0o755)
    return OciRuntime(tmp_path / "state", str(script))


@pytest.mark.parametrize(
    ("stderr", "code", "command"),
    [
        (RUNC_NOT_IN_PATH, 255, "nosuchcmd"),
        (RUNC_NO_FILE, 255, "/bin/nosuchcmd"),
        (CRUN_NOT_IN_PATH, 1, "nosuchcmd"),
    ],
    ids=["runc-path", "runc-absolute", "crun"],
)
def test_a_missing_command_is_127(tmp_path: Path, stderr: str, code: int, command: str) -> None:
    result = _runtime(tmp_path, stderr, code).exec("web1.1234abcd", [command, "-x"], timeout=10)
    assert result.exit_code == 127
    assert result.stdout == b""
    assert result.stderr == f"{command}: command not found in instance web1\n".encode()


@pytest.mark.parametrize(
    ("stderr", "code"),
    [
        ("sh: nosuchcmd: not found", 127),  # the command's own shell said it: passed through
        ("executable file not found in $PATH", 0),  # a command that printed it and succeeded
        ('exec: "/etc/passwd": permission denied', 255),  # not a missing command
        ("anything", 3),
    ],
)
def test_other_results_pass_through(tmp_path: Path, stderr: str, code: int) -> None:
    result = _runtime(tmp_path, stderr, code).exec("web1.1234abcd", ["cmd"], timeout=10)
    assert (result.exit_code, result.stdout, result.stderr) == (code, b"out\n", f"{stderr}\n".encode())
