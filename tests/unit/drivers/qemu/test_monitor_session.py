"""The QMP session (monitor.py) against a scripted peer on a Unix socket: QEMU may send an event
between its answer to qmp_capabilities being due and that answer (a block job's event during a
mirror does), and a session must still open; a refused, silent or hung-up negotiation is a
StateError; a message ahead of the greeting gets one fresh connection. Real QEMU:
tests/integration/drivers/qemu/."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from virtkit.drivers.qemu.monitor import Monitor
from virtkit.errors import StateError

VERSION = {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}
GREETING = {"QMP": {"version": VERSION, "capabilities": []}}
EVENT = {"event": "JOB_STATUS_CHANGE", "data": {"id": "m0", "status": "ready"},
         "timestamp": {"seconds": 1, "microseconds": 2}}  # fmt: skip

Reply = Callable[[dict[str, object]], list[dict[str, object]]]


def _messages(peer: socket.socket) -> Iterator[dict[str, object]]:
    """The JSON objects the client sends (QMP needs no line breaks between them)."""
    decoder, buffer = json.JSONDecoder(), ""
    while chunk := peer.recv(4096):
        buffer += chunk.decode()
        while buffer.strip():
            try:
                message, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                break
            buffer = buffer.lstrip()[end:]
            yield message


def _serve(listener: socket.socket, reply: Reply | None, before: list[dict[str, object]]) -> None:
    peer, _ = listener.accept()
    with peer:
        peer.sendall(b"".join(json.dumps(m).encode() + b"\r\n" for m in [*before, GREETING]))
        if reply is None:  # a QEMU quitting (its command line refused) as it greets
            return
        for message in _messages(peer):
            try:
                peer.sendall(b"".join(json.dumps(m).encode() + b"\r\n" for m in reply(message)))
            except BrokenPipeError:
                return


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    path = tmp_path / "monitor.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(2)
    threads: list[threading.Thread] = []

    def start(reply: Reply | None, before: list[dict[str, object]] | None = None) -> Path:
        """Serve one connection; `before`: messages sent ahead of the greeting."""
        thread = threading.Thread(target=_serve, args=(listener, reply, before or []), daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    listener.close()
    for thread in threads:
        thread.join(5)


def _event_first(message: dict[str, object]) -> list[dict[str, object]]:
    """QEMU's order when a job's event is queued while qmp_capabilities runs: the event, then the answer."""
    if message["execute"] == "qmp_capabilities":
        return [EVENT, {"return": {}, "id": message.get("id")}]
    return [EVENT, {"return": {"status": "running", "running": True}, "id": message.get("id")}]


def test_an_event_before_the_capabilities_answer_is_set_aside(peer: Callable[..., Path]) -> None:
    path = peer(_event_first)
    assert Monitor(path, name="v1", connect_timeout=5, timeout=5).query_status() == "running"


def test_a_refused_negotiation_is_a_state_error(peer: Callable[..., Path]) -> None:
    def refuse(message: dict[str, object]) -> list[dict[str, object]]:
        return [{"error": {"class": "GenericError", "desc": "no"}, "id": message.get("id")}]

    path = peer(refuse)
    with pytest.raises(StateError, match=r"monitor of v1 does not answer.*no"):
        Monitor(path, name="v1", connect_timeout=5, timeout=5).query_status()


def test_a_silent_negotiation_times_out_as_a_state_error(peer: Callable[..., Path]) -> None:
    path = peer(lambda message: [])
    with pytest.raises(StateError, match=r"monitor of v1 does not answer.*timed out"):
        Monitor(path, name="v1", connect_timeout=0.5, timeout=5).query_status()


def test_a_hang_up_after_the_greeting_is_a_state_error(peer: Callable[..., Path]) -> None:
    path = peer(None)
    with pytest.raises(StateError, match=r"monitor of v1 does not answer.*hung up"):
        Monitor(path, name="v1", connect_timeout=5, timeout=5).query_status()


def _answer(message: dict[str, object]) -> list[dict[str, object]]:
    if message["execute"] == "qmp_capabilities":
        return [{"return": {}, "id": message.get("id")}]
    return [{"return": {"status": "paused", "running": False}, "id": message.get("id")}]


def test_a_message_before_the_greeting_gets_one_fresh_connection(peer: Callable[..., Path]) -> None:
    path = peer(_answer, [EVENT])  # left from a previous session
    peer(_answer)
    assert Monitor(path, name="v1", connect_timeout=5, timeout=5).query_status() == "paused"


def test_a_peer_that_never_greets_is_a_state_error(peer: Callable[..., Path]) -> None:
    path = peer(_answer, [EVENT])
    peer(_answer, [EVENT])
    with pytest.raises(StateError, match=r"monitor of v1 does not answer.*Greeting"):
        Monitor(path, name="v1", connect_timeout=5, timeout=5).query_status()
