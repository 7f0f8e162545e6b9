"""The tiny image's agent script run on this host by the same busybox the image carries (no QEMU).

The agent serves stdin/stdout when given no port; here each connection to a unix socket gets
its own agent with the connection as stdin and stdout, so exec_in_guest talks to it as to a
guest. Quick enough to try the script's edge cases the guest test leaves out.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.drivers.qemu.agent import encode_argv, exec_in_guest
from virtkit.errors import ToolError
from virtkit.images.tinyagent import AGENT, ARGV_MAX

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="needs busybox (busybox-static)")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Path]:
    script = tmp_path / "agent"
    script.write_text(AGENT)
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    agents: list[subprocess.Popen[bytes]] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                fd = conn.fileno()
                agents.append(subprocess.Popen([str(BUSYBOX), "sh", str(script)], stdin=fd, stdout=fd,
                                               env={"TMPDIR": str(tmp_path)}))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)
        for process in agents:  # each exits (removing its work dir) once its client hung up
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent", "agent.sock"]  # work dirs removed


def test_exec_through_the_script(agent: Path) -> None:
    result = exec_in_guest(agent, ["sh", "-c", 'cat; printf "%s|" "$@"; echo e >&2; exit 4', "sh", "a b", ""],
                           5, stdin=b"\0in\n")
    assert (result.exit_code, result.stdout, result.stderr) == (4, b"\0in\na b||", b"e\n")


def test_program_gets_no_agent_descriptors(agent: Path) -> None:
    out = exec_in_guest(agent, ["ls", "/proc/self/fd"], 5).stdout.split()
    assert sorted(out, key=int)[:3] == [b"0", b"1", b"2"] and len(out) == 4  # + ls's own directory


def test_builtin_names_and_signals(agent: Path) -> None:
    assert exec_in_guest(agent, ["sh", "-c", "kill -TERM $$"], 5).exit_code == 143
    assert exec_in_guest(agent, ["echo", "-n", "x"], 5).stdout == b"x"


def test_timeout_keeps_partial_output_and_kills_the_group(agent: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match="did not finish within 1s") as caught:
        exec_in_guest(agent, ["sh", "-c", "echo begun >&2; sleep 6071 & sleep 6072"], 1)
    assert caught.value.stderr == "begun\n"
    assert time.monotonic() - started < 4
    # Durations no other process uses; the kernel may take a moment to reap under load.
    deadline = time.monotonic() + 3
    while True:
        ps = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True, check=True).stdout
        alive = [line for line in ps.splitlines() if "sleep 607" in line and not line.startswith("Z")]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert alive == []


def test_background_holding_stdout_is_bounded_by_the_timeout(agent: Path) -> None:
    with pytest.raises(ToolError, match="did not finish within 1s"):
        exec_in_guest(agent, ["sh", "-c", "sleep 5 & echo started"], 1)
    detached = ["sh", "-c", "sleep 3 >/dev/null 2>&1 & echo started"]
    assert exec_in_guest(agent, detached, 5).stdout == b"started\n"


def test_oversized_output_is_refused(agent: Path) -> None:
    with pytest.raises(ToolError, match="more than 16 MiB"):
        exec_in_guest(agent, ["head", "-c", "17000000", "/dev/zero"], 20)
    assert exec_in_guest(agent, ["echo", "ok"], 5).stdout == b"ok\n"


def test_agent_refuses_what_it_cannot_take_but_stays_in_step(agent: Path) -> None:
    """A request the host would not send (argv too long): the agent reads it all, says no."""
    argv = encode_argv(["x" * 1000] * 100) + b"y" * (ARGV_MAX + 10)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(agent))
        sock.settimeout(10)
        sock.sendall(f"EXEC 1d 5 {len(argv)} 0\n".encode() + argv + b"PING after\n")
        replies = b""
        while b"PONG after\n" not in replies:
            chunk = sock.recv(4096)
            assert chunk, replies
            replies += chunk
    assert replies == b"ERROR 1d request-too-large\nPONG after\n"


def test_malformed_lines_are_ignored(agent: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(agent))
        sock.settimeout(10)
        sock.sendall(b"HELLO\nEXEC 1 x y z\n\nEXEC\nPING ok\n")
        assert sock.recv(100) == b"PONG ok\n"
