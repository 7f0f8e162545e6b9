"""Readiness by guest agent (boot.watch_ready with spec.ready_agent), against a fake
qemu-guest-agent on a unix socket: ready at its first answer, bounded by the timeout, and the
reason shown when the guest dies first."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.drivers.qemu.boot import BootRecord, watch_ready
from virtkit.drivers.qemu.spec import VmSpec
from virtkit.errors import StateError, VirtkitError


class FakeQga:
    """Listens where QEMU's chardev would; answers guest-sync-delimited once `up` is set (before
    that, like a guest whose agent has not started, it reads and says nothing)."""

    def __init__(self, path: Path, stale: bytes = b"") -> None:
        self.up = threading.Event()
        self.stale = stale  # sent first once up: a previous client's leftover answer
        self.connections = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.server.settimeout(0.1)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buffer = b""
        while not self.stopped.is_set():
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if not self.up.is_set():
                continue
            if self.stale:
                conn.sendall(self.stale)
                self.stale = b""
            for line in lines:
                request = json.loads(line.lstrip(b"\xff"))
                if request["execute"] == "guest-sync-delimited":
                    answer = {"return": request["arguments"]["id"]}
                    conn.sendall(b"\xff" + json.dumps(answer).encode() + b"\n")

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.server.close()


@pytest.fixture
def boot(tmp_path: Path) -> BootRecord:
    spec = VmSpec(
        name="d1", uuid="5b0d2f7e-3c4a-4f1e-9a53-0d6c1e2b7f10", arch="x86_64", accel="tcg", machine="microvm",
        cpus=1, memory=512 << 20, pidfile=str(tmp_path / "pid"), qmp_socket=str(tmp_path / "monitor.sock"),
        console_socket=str(tmp_path / "console.sock"), console_log=str(tmp_path / "console.log"),
        agent_socket=str(tmp_path / "agent.sock"), agent_port="org.qemu.guest_agent.0", ready_agent=True,
    )  # fmt: skip
    Path(spec.console_log).write_bytes(b"[    0.000000] Linux version 6.1.0-57-amd64\n")
    return BootRecord(spec, time.time(), console_offset=0, log_offset=0, phases={"spawn": 0.05})


@pytest.fixture
def qga(boot: BootRecord) -> Iterator[FakeQga]:
    assert boot.spec.agent_socket is not None
    fake = FakeQga(Path(boot.spec.agent_socket))
    yield fake
    fake.close()


def test_ready_when_the_agent_first_answers(boot: BootRecord, qga: FakeQga) -> None:
    threading.Timer(0.6, qga.up.set).start()
    phases = watch_ready(boot, 10, alive=lambda: True, why_dead=lambda: "")
    assert list(phases) == ["spawn", "kernel", "ready"]
    assert phases["kernel"] < 0.5 <= phases["ready"] < 5
    assert qga.connections == 1  # one connection for the whole watch


def test_answers_to_someone_else_do_not_count(boot: BootRecord, tmp_path: Path) -> None:
    assert boot.spec.agent_socket is not None
    fake = FakeQga(Path(boot.spec.agent_socket), stale=b'\xff{"return": 7}\n\xff{"ret')
    try:
        fake.up.set()
        phases = watch_ready(boot, 10, alive=lambda: True, why_dead=lambda: "")
        assert phases["ready"] < 5
    finally:
        fake.close()


def test_the_wait_is_bounded_and_says_what_it_waited_for(boot: BootRecord, qga: FakeQga) -> None:
    began = time.monotonic()
    with pytest.raises(VirtkitError, match=r"not ready within 0\.8 s, waiting for its guest agent") as caught:
        watch_ready(boot, 0.8, alive=lambda: True, why_dead=lambda: "")
    assert 0.8 <= time.monotonic() - began < 3
    assert "its kernel started" in caught.value.message and "still running" in str(caught.value.hint)


def test_a_guest_that_dies_first_says_why(boot: BootRecord, qga: FakeQga) -> None:
    deaths = iter([True, True, False])
    with pytest.raises(StateError, match="stopped before it was ready: Memory cgroup out of memory"):
        watch_ready(boot, 10, alive=lambda: next(deaths), why_dead=lambda: "Memory cgroup out of memory")


def test_no_socket_yet_is_waited_for_too(boot: BootRecord) -> None:
    assert boot.spec.agent_socket is not None
    path = Path(boot.spec.agent_socket)
    holder: list[FakeQga] = []

    def appear() -> None:
        holder.append(FakeQga(path))
        holder[0].up.set()

    threading.Timer(0.4, appear).start()
    try:
        assert watch_ready(boot, 10, alive=lambda: True, why_dead=lambda: "")["ready"] >= 0.3
    finally:
        for fake in holder:
            fake.close()
