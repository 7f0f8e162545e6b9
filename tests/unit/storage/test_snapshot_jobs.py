"""Monitor.run_job (the snapshot-save/-load jobs of stateful snapshots) against a scripted QMP server
on a unix socket: it waits for the job to conclude (events or polling), dismisses it, reports QEMU's
error, and gives up after its timeout, cancelling the job. Real QEMU: tests/integration/storage."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtkit.drivers.qemu.monitor import Monitor
from virtkit.errors import ToolError

GREETING = {
    "QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}
}


class FakeQemu:
    """Answers QMP: the job of the last job command goes through `statuses` one per query-jobs
    (the last one sticks), with a JOB_STATUS_CHANGE event at each change when `events`."""

    def __init__(
        self, path: Path, statuses: list[str], error: str | None = None, *, events: bool = True
    ) -> None:
        self.statuses, self.error, self.events = statuses, error, events
        self.received: list[str] = []
        self.job = ""
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("wb") as stream:
            self._send(stream, GREETING)
            for message in _messages(conn):
                self._answer(stream, message)

    def _answer(self, stream: object, message: dict[str, Any]) -> None:
        command, reply = message["execute"], {"return": {}, "id": message.get("id")}
        self.received.append(command)
        if command in ("snapshot-save", "snapshot-load"):
            self.job = message["arguments"]["job-id"]
            self._send(stream, reply)
            self._event(stream, "created")
            return
        if command == "query-jobs":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            job = {"id": self.job, "type": "snapshot-save", "status": status}
            if status == "concluded" and self.error:
                job["error"] = self.error
            reply["return"] = [job]
        self._send(stream, reply)

    def _event(self, stream: object, status: str) -> None:
        if self.events:
            event = {"event": "JOB_STATUS_CHANGE", "data": {"id": self.job, "status": status},
                     "timestamp": {"seconds": 0, "microseconds": 0}}  # fmt: skip
            self._send(stream, event)

    @staticmethod
    def _send(stream: object, message: object) -> None:
        stream.write(json.dumps(message).encode() + b"\n")  # type: ignore[attr-defined]
        stream.flush()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.close()


def _messages(conn: socket.socket) -> Iterator[dict[str, Any]]:
    """The JSON objects a QMP client sends (one after the other, not one a line)."""
    decoder, buffer = json.JSONDecoder(), ""
    while chunk := conn.recv(65536):
        buffer += chunk.decode()
        while buffer.strip():
            try:
                message, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                break
            buffer = buffer.lstrip()[end:]
            yield message


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "qmp.sock"
    yield path
    path.unlink(missing_ok=True)


def run(sock: Path, qemu: FakeQemu, timeout: float = 10.0) -> None:
    try:
        Monitor(sock, name="v1").run_job("snapshot-save", {"job-id": "j1", "tag": "s1"}, timeout)
    finally:
        qemu.close()


def test_the_job_is_waited_for_and_dismissed(sock: Path) -> None:
    qemu = FakeQemu(sock, ["running", "running", "pending", "concluded"])
    run(sock, qemu)
    assert qemu.received[0] == "qmp_capabilities" and qemu.received[1] == "snapshot-save"
    assert qemu.received[-1] == "job-dismiss" and qemu.received.count("query-jobs") == 4


def test_without_events_it_polls(sock: Path) -> None:
    qemu = FakeQemu(sock, ["running", "concluded"], events=False)
    began = time.monotonic()
    run(sock, qemu)
    assert qemu.received[-1] == "job-dismiss" and time.monotonic() - began < 5


def test_qemus_error_is_reported_after_the_dismiss(sock: Path) -> None:
    qemu = FakeQemu(sock, ["concluded"], error="Device 'disk1' is writable but does not support snapshots")
    with pytest.raises(ToolError, match="QEMU could not snapshot-save for v1: Device 'disk1' is writable"):
        run(sock, qemu)
    assert qemu.received[-1] == "job-dismiss"


def test_a_job_that_does_not_finish_is_cancelled_in_time(sock: Path) -> None:
    qemu = FakeQemu(sock, ["running"], events=False)
    began = time.monotonic()
    with pytest.raises(ToolError, match=r"did not finish snapshot-save for v1 within 1\.5 s"):
        run(sock, qemu, timeout=1.5)
    assert 1.5 <= time.monotonic() - began < 5
    assert "job-cancel" in qemu.received
