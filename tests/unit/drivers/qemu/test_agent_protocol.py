"""The host side of `exec`: framing and errors, against a thread playing the guest.

The tiny agent's protocol (virtkit.images.tinyagent) and qemu-guest-agent's JSON are spoken by
Python fakes: over a socketpair for the line/byte reader, over a unix socket in tmp_path (as
QEMU's chardev would be) for the public functions.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from virtkit.drivers.base import ExecResult
from virtkit.drivers.qemu import agent, channel, guestagent
from virtkit.drivers.qemu.agent import (
    QGA_PORT,
    encode_argv,
    exec_in_guest,
    exec_on_port,
    guest_agent_exec,
    ping_agent,
)
from virtkit.drivers.qemu.channel import AgentTimeout, Link
from virtkit.errors import SpecError, StateError, ToolError
from virtkit.images.tinyagent import ARGV_MAX, OUTPUT_MAX

Play = Callable[["Peer"], object]


class Peer:
    """The guest end of one connection, read as the agent reads it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stream = sock.makefile("rb")

    def line(self) -> bytes:
        return self.stream.readline().rstrip(b"\n")

    def read(self, size: int) -> bytes:
        return self.stream.read(size)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pong(self) -> None:
        verb, nonce = self.line().split()
        assert verb == b"PING"
        self.send(b"PONG " + nonce + b"\n")

    def request(self) -> tuple[str, str, list[bytes], bytes]:
        """An EXEC: its id, timeout, argv and stdin."""
        verb, request_id, secs, alen, ilen = self.line().decode().split()
        assert verb == "EXEC"
        argv = self.read(int(alen))
        assert argv.endswith(b"\0")
        return request_id, secs, argv[:-1].split(b"\0"), self.read(int(ilen))

    def result(self, request_id: str, code: int, out: bytes, err: bytes, status: str = "ok") -> None:
        self.send(f"RESULT {request_id} {status} {code} {len(out)} {len(err)}\n".encode() + out + err)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Play], Path]]:
    """Listen where QEMU's chardev would; each accepted connection is played by `play`."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []
    failures: list[BaseException] = []

    def start(play: Play) -> Path:
        path = tmp_path / f"agent{len(listeners)}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        listeners.append(listener)

        def run() -> None:
            conn, _ = listener.accept()
            with conn:
                try:
                    play(Peer(conn))
                except (OSError, ValueError):
                    pass  # the host hung up first, as tests of timeouts make it
                except BaseException as error:
                    failures.append(error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(5)
    assert not failures, failures


def test_argv_is_nul_terminated_utf8() -> None:
    assert encode_argv(["printf", "%s", "a b", "ü", ""]) == b"printf\0%s\0a b\0\xc3\xbc\0\0"


@pytest.mark.parametrize("argv", [[], [""], ["echo", "a\0b"], ["x" * ARGV_MAX]])
def test_bad_argv_is_refused(argv: list[str]) -> None:
    with pytest.raises(SpecError):
        encode_argv(argv)


def test_line_and_exact_reads_over_a_socketpair() -> None:
    host, guest = socket.socketpair()
    with host, guest:
        link = Link(host)
        guest.sendall(b"RESULT a ok 0 3 0\nxyzPONG 1\n")
        deadline = time.monotonic() + 2
        assert link.read_line(deadline) == b"RESULT a ok 0 3 0"
        assert link.read_exact(3, deadline) == b"xyz"
        guest.sendall(b"garbage" * 1000 + b"PONG 7\nafter\n")
        assert link.skip_until(b"PONG 7\n", deadline)
        assert link.read_line(deadline) == b"after"
        with pytest.raises(AgentTimeout):
            link.read_line(time.monotonic() + 0.05)
        guest.sendall(b"x" * (channel.LINE_MAX + 10))
        with pytest.raises(ToolError, match="longer than"):
            link.read_line(deadline)


def test_exec_round_trip_with_binary_output(serve: Callable[[Play], Path]) -> None:
    seen: list[Any] = []

    def play(peer: Peer) -> None:
        peer.pong()
        request_id, secs, argv, stdin = peer.request()
        seen.extend([secs, argv, stdin])
        peer.result(request_id, 3, bytes(range(256)), b"err\n")

    result = exec_in_guest(serve(play), ["sh", "-c", "x\ny", "it's"], 7, stdin=b"\0in")
    assert result == ExecResult(3, bytes(range(256)), b"err\n")
    assert seen == ["7.000", [b"sh", b"-c", b"x\ny", b"it's"], b"\0in"]


def test_stale_bytes_and_extra_pongs_are_skipped(serve: Callable[[Play], Path]) -> None:
    def play(peer: Peer) -> None:
        _, nonce = peer.line().split()
        # What a previous client left: half a reply, an old result, an old pong.
        peer.send(b"\x00\xffbinary\nRESULT 0ld ok 0 5 0\nhello" + b"PONG 0ldn0nce\n")
        peer.send(b"PONG " + nonce + b"\n")
        peer.send(b"PONG " + nonce + b"\n")  # answer to a repeated ping
        request_id, *_ = peer.request()
        peer.result(request_id, 0, b"fresh", b"")

    assert exec_in_guest(serve(play), ["true"], 5).stdout == b"fresh"


def test_ping_is_repeated_until_answered(serve: Callable[[Play], Path]) -> None:
    def play(peer: Peer) -> None:
        peer.line()  # the first ping is lost, as when the agent opens its port late
        peer.pong()

    assert ping_agent(serve(play), 5) >= channel.PING_INTERVAL * 0.9


@pytest.mark.parametrize(
    ("status", "message"),
    [("timeout", r"'sleep' did not finish within 2s in the guest; it was killed"),
     ("toolarge", "wrote more than 16 MiB"),
     ("weird", "unknown status")],
)
def test_guest_statuses_become_tool_errors(serve: Callable[[Play], Path], status: str, message: str) -> None:
    def play(peer: Peer) -> None:
        peer.pong()
        request_id, *_ = peer.request()
        peer.result(request_id, 137, b"", b"partial", status)

    with pytest.raises(ToolError, match=message):
        exec_in_guest(serve(play), ["sleep", "100"], 2)


def test_refused_request(serve: Callable[[Play], Path]) -> None:
    def play(peer: Peer) -> None:
        peer.pong()
        request_id, *_ = peer.request()
        peer.send(f"ERROR {request_id} request-too-large\n".encode())

    with pytest.raises(ToolError, match="refused to run 'x': request too large"):
        exec_in_guest(serve(play), ["x"], 2)


def test_unexpected_reply(serve: Callable[[Play], Path]) -> None:
    def play(peer: Peer) -> None:
        peer.pong()
        peer.request()
        peer.send(b"HELLO there\n")

    with pytest.raises(ToolError, match="unexpected reply"):
        exec_in_guest(serve(play), ["x"], 2)


def test_silent_agent_times_out_clearly(serve: Callable[[Play], Path]) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match="the guest agent did not answer within 1s") as caught:
        exec_in_guest(serve(lambda peer: peer.read(1 << 20)), ["true"], 1)
    assert time.monotonic() - started < 3
    assert caught.value.hint and "tiny image" in caught.value.hint


def test_result_that_never_comes(serve: Callable[[Play], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "GRACE", 0.2)

    def play(peer: Peer) -> None:
        peer.pong()
        peer.request()
        peer.read(1)  # until the host hangs up

    with pytest.raises(ToolError, match="did not answer within 1s"):
        exec_in_guest(serve(play), ["true"], 0.5)


def test_qemu_closing_the_socket_is_a_state_error(serve: Callable[[Play], Path]) -> None:
    def play(peer: Peer) -> None:
        peer.pong()
        peer.request()

    with pytest.raises(StateError, match="VM stopped"):
        exec_in_guest(serve(play), ["true"], 5)


def test_no_socket_means_not_running(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not running"):
        exec_in_guest(tmp_path / "missing.sock", ["true"], 5)
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(dead))  # a socket file left by a QEMU that died
    with pytest.raises(StateError, match="not running"):
        guest_agent_exec(dead, ["true"], 5)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_bad_timeout(tmp_path: Path, timeout: float) -> None:
    with pytest.raises(SpecError, match="timeout"):
        exec_in_guest(tmp_path / "x.sock", ["true"], timeout)


def test_oversized_stdin(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="stdin"):
        exec_in_guest(tmp_path / "x.sock", ["cat"], 5, stdin=b"x" * (OUTPUT_MAX + 1))


# qemu-guest-agent


def qga(exec_reply: Callable[[dict[str, Any]], dict[str, Any]], statuses: list[dict[str, Any]]) -> Play:
    """A fake QGA: guest-sync-delimited, guest-exec answered by `exec_reply`, then `statuses`."""

    def play(peer: Peer) -> None:
        peer.send(b'{"return": {"pid": 1, "exited": true}}\n')  # a previous client's leftover
        while line := peer.line():
            request = json.loads(line.lstrip(b"\xff"))
            command, args = request["execute"], request.get("arguments", {})
            if command == "guest-sync-delimited":
                peer.send(b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n")
                continue
            if command == "guest-exec":
                reply = exec_reply(args)
            else:
                assert command == "guest-exec-status"
                reply = {"return": statuses.pop(0) if len(statuses) > 1 else statuses[0]}
            peer.send(json.dumps({**reply, "id": request["id"]}).encode() + b"\n")

    return play


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_qga_exec(serve: Callable[[Play], Path]) -> None:
    calls: list[dict[str, Any]] = []

    def started(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(args)
        return {"return": {"pid": 42}}

    done = {"exited": True, "exitcode": 3, "out-data": b64(b"\0\xffout"), "err-data": b64(b"err")}
    path = serve(qga(started, [{"exited": False}, {"exited": False}, done]))
    assert guest_agent_exec(path, ["sh", "-c", "x"], 5, stdin=b"in") == ExecResult(3, b"\0\xffout", b"err")
    assert calls == [{"path": "sh", "arg": ["-c", "x"], "capture-output": True, "input-data": b64(b"in")}]


def test_qga_signal_and_missing_program(serve: Callable[[Play], Path]) -> None:
    path = serve(qga(lambda args: {"return": {"pid": 1}}, [{"exited": True, "signal": 9}]))
    assert guest_agent_exec(path, ["x"], 5).exit_code == 137
    failed = {"error": {"class": "GenericError", "desc": "Failed to execute child process “nope” (No such"}}
    result = guest_agent_exec(serve(qga(lambda args: failed, [])), ["nope"], 5)
    assert result.exit_code == 127 and b"nope" in result.stderr


def test_qga_truncated_output(serve: Callable[[Play], Path]) -> None:
    path = serve(qga(lambda args: {"return": {"pid": 1}},
                     [{"exited": True, "exitcode": 0, "out-truncated": True}]))
    with pytest.raises(ToolError, match="16 MiB"):
        guest_agent_exec(path, ["yes"], 5)


def test_qga_timeout_kills_the_program(
    serve: Callable[[Play], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guestagent, "GRACE", 0.5)
    started: list[dict[str, Any]] = []

    def spawn(args: dict[str, Any]) -> dict[str, Any]:
        started.append(args)
        return {"return": {"pid": 10 + len(started)}}

    with pytest.raises(ToolError, match=r"'sleep' did not finish within 0.3s in the guest; it was killed"):
        guest_agent_exec(serve(qga(spawn, [{"exited": False}])), ["sleep", "100"], 0.3)
    assert started[1] == {"path": "kill", "arg": ["-KILL", "11"]}


def test_qga_silent(serve: Callable[[Play], Path]) -> None:
    with pytest.raises(ToolError, match="did not answer within 1s") as caught:
        guest_agent_exec(serve(lambda peer: peer.read(1 << 20)), ["true"], 1)
    assert caught.value.hint and "qemu-guest-agent" in caught.value.hint


def test_the_port_name_picks_the_agent(serve: Callable[[Play], Path]) -> None:
    done = {"exited": True, "exitcode": 0, "out-data": b64(b"qga")}
    path = serve(qga(lambda args: {"return": {"pid": 1}}, [done]))
    assert exec_on_port(QGA_PORT, path, ["x"], 5).stdout == b"qga"

    def play(peer: Peer) -> None:
        peer.pong()
        request_id, *_ = peer.request()
        peer.result(request_id, 0, b"tiny", b"")

    assert exec_on_port("org.virtkit.agent", serve(play), ["x"], 5).stdout == b"tiny"
