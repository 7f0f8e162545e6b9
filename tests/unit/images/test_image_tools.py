"""run_tool: missing tools name their Debian package; failures and timeouts become ToolError."""

from __future__ import annotations

import sys

import pytest

from virtkit.errors import HostCapabilityError, ToolError
from virtkit.images.tools import require_tool, run_tool, tail


def test_success_returns_output() -> None:
    done = run_tool([sys.executable, "-c", "print('hello')"], timeout=10, what="saying hello")
    assert done.stdout == "hello\n"


def test_missing_tool_names_its_package() -> None:
    with pytest.raises(HostCapabilityError, match=r"mkfs\.nope is not installed") as caught:
        run_tool(["mkfs.nope"], timeout=5, what="x", package="e2fsprogs")
    assert caught.value.hint == "install it: apt-get install e2fsprogs"
    with pytest.raises(HostCapabilityError) as caught:
        require_tool("qemu-img-that-is-not-there")
    assert "qemu-img-that-is-not-there" in str(caught.value)


def test_failure_carries_command_exit_code_and_stderr_tail() -> None:
    script = "import sys; sys.stderr.write('noise\\n' * 1000 + 'the reason\\n'); sys.exit(3)"
    with pytest.raises(ToolError) as caught:
        run_tool([sys.executable, "-c", script], timeout=10, what="doing a thing")
    error = caught.value
    assert str(error).startswith("doing a thing:") and str(error).endswith("(exit 3): the reason")
    assert error.returncode == 3 and error.argv[0] == sys.executable
    assert error.stderr.endswith("the reason") and len(error.stderr) <= 2003


def test_timeout_is_a_tool_error() -> None:
    with pytest.raises(ToolError, match=r"did not finish within 0\.2 s"):
        run_tool([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2, what="sleeping")


def test_tail_keeps_the_end() -> None:
    assert tail("  short \n") == "short"
    assert tail("a" * 10 + "b" * 5, limit=5) == "...bbbbb"
