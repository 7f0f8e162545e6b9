"""guest_agent_exec against the real qemu-guest-agent of Debian 12, run on this host (no VM).

The package is fetched once into the virtkit cache (as image builds fetch kernels) and its
qemu-ga listens on a unix socket, which is what QEMU's chardev looks like to virtkit. The
commands run on this host, so they are harmless ones. qemu-ga is always killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.drivers.qemu.agent import guest_agent_exec
from virtkit.errors import ToolError
from virtkit.images.debcache import AptRoot, fetch_unpacked
from virtkit.ops.images import cache_dir

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="qemu-ga runs commands as root"),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt"),
]

CACHE = cache_dir()


@pytest.fixture(scope="module")
def qga(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    apt = AptRoot(CACHE, "amd64")
    apt.refresh()
    root = fetch_unpacked(apt, "qemu-guest-agent", apt.show("qemu-guest-agent")["Version"])
    state = tmp_path_factory.mktemp("qga")
    sock = state / "qga.sock"
    process = subprocess.Popen([str(root / "usr" / "sbin" / "qemu-ga"), "-m", "unix-listen", "-p", str(sock),
                                "-t", str(state), "-l", str(state / "log")])
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert process.poll() is None and time.monotonic() < deadline, "qemu-ga did not start"
            time.sleep(0.02)
        yield sock
    finally:
        process.kill()
        process.wait(10)


def test_exec_through_qemu_guest_agent(qga: Path) -> None:
    script = 'cat; printf "%s|" "$@"; echo e >&2; exit 3'
    result = guest_agent_exec(qga, ["sh", "-c", script, "sh", "a b", ""], 10, stdin=bytes(range(256)))
    assert (result.exit_code, result.stdout, result.stderr) == (3, bytes(range(256)) + b"a b||", b"e\n")
    assert guest_agent_exec(qga, ["sh", "-c", "kill -9 $$"], 10).exit_code == 137
    missing = guest_agent_exec(qga, ["no-such-program"], 10)
    assert missing.exit_code == 127 and b"no-such-program" in missing.stderr


def test_timeout_kills_and_the_agent_stays_usable(qga: Path) -> None:
    with pytest.raises(ToolError, match="'sleep' did not finish within 1s in the guest; it was killed"):
        guest_agent_exec(qga, ["sleep", "97"], 1)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "sleep 97" not in ps
    assert guest_agent_exec(qga, ["echo", "again"], 10).stdout == b"again\n"
