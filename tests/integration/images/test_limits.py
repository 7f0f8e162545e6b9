"""run_limited with real processes: each limit is enforced and said plainly; output and fds pass through."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from virtkit.errors import HostCapabilityError, ToolError
from virtkit.images.limits import Limits, run_limited
from virtkit.units import MiB

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
EASY = Limits(wall=10, cpu=5, memory=512 * MiB)


def test_output_and_exit_code() -> None:
    done = run_limited(["sh", "-c", "echo out; echo err >&2; exit 3"], limits=EASY, what="testing", ok=(0, 3))
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_failure_names_the_tool_and_the_last_stderr_line() -> None:
    with pytest.raises(ToolError, match=r"^testing: sh failed \(exit 2\): second$") as caught:
        run_limited(["sh", "-c", "echo first >&2; echo second >&2; exit 2"], limits=EASY, what="testing")
    assert caught.value.returncode == 2 and caught.value.argv[0] == "sh"


def test_cpu_time_is_limited() -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"ran out of CPU time \(limit 1 s\)"):
        run_limited(
            ["sh", "-c", "while :; do :; done"], limits=Limits(wall=20, cpu=1, memory=512 * MiB), what="t"
        )
    assert time.monotonic() - started < 5


def test_wall_time_is_limited_and_the_process_reaped() -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"did not finish"):
        run_limited(["sleep", "30"], limits=Limits(wall=0.5, cpu=5, memory=512 * MiB), what="t")
    assert time.monotonic() - started < 3


def test_memory_is_limited() -> None:
    perl = ["perl", "-e", '$x = "a" x (600 * 1024 * 1024); print length($x)']
    with pytest.raises(ToolError, match=r"ran out of memory \(limit 256MiB\)"):
        run_limited(perl, limits=Limits(wall=20, cpu=10, memory=256 * MiB), what="t")


def test_progress_lines_split_on_carriage_returns() -> None:
    lines: list[str] = []
    script = r"printf '    (0.00/100%%)\r    (50.00/100%%)\r    (100.00/100%%)\r\n'"
    run_limited(["sh", "-c", script], limits=EASY, what="t", on_line=lines.append)
    assert lines == ["    (0.00/100%)", "    (50.00/100%)", "    (100.00/100%)"]


def test_passed_fds_are_readable_and_renamed_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("content\n")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = run_limited(["cat", f"/dev/fd/{fd}"], limits=EASY, what="t", pass_fds=(fd,))
        assert done.stdout == "content\n"
        with pytest.raises(ToolError, match=r"secret\.txt: No such file") as caught:
            run_limited(
                ["sh", "-c", f"echo /dev/fd/{fd}: No such file >&2; exit 1"],
                limits=EASY,
                what="t",
                rename={f"/dev/fd/{fd}": "secret.txt"},
            )
        assert f"/dev/fd/{fd}" not in caught.value.message
    finally:
        os.close(fd)


def test_a_missing_tool_is_a_host_capability() -> None:
    with pytest.raises(HostCapabilityError, match="no-such-tool is not installed"):
        run_limited(["no-such-tool"], limits=EASY, what="t")
