"""The API's streams against a real `virtkit serve`: consoles over WebSocket, streamed exec, exports
downloaded and imported into another server, bad uploads refused, and who may use any of them.

Every server is a real process (tests/apiserver.py) on a state root seeded with the tiny image; a
server's open file descriptors are counted in /proc before and after clients leave mid-stream.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver import VIRTKIT, Server, servers  # noqa: F401  (the fixture)
from tests.e2e.conftest import seed_root, tiny_template  # noqa: F401  (the fixture)
from tests.permissions import reachable
from virtkit.api.client import Client
from virtkit.api.streams import Streams
from virtkit.errors import (
    AuthError,
    CommandNotFoundError,
    ConflictError,
    NotFoundError,
    RejectedError,
    SpecError,
    StateError,
    ToolError,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers and VMs need root")

Start = Callable[..., Server]
SETTLE = 10.0  # seconds a server may take to let go of what a departed client held


@pytest.fixture
def api(tmp_path: Path, tiny_template: Path, servers: Start) -> Iterator[tuple[Server, Client, Streams]]:  # noqa: F811
    """A server on a root holding the tiny image; every instance left at the end is deleted."""
    root = reachable(tmp_path / "root")
    seed_root(tiny_template, root)
    server = servers(root)
    client = server.client(timeout=120)
    streams = Streams(server.url, timeout=120, client=client)
    yield server, client, streams
    for instance in client.instances():
        client.run("DELETE", f"/1.0/instances/{instance['name']}", params={"force": True})
    streams.close()


def launch(client: Client, name: str, kind: str) -> None:
    client.run("POST", "/1.0/instances", json={"image": "tiny", "name": name, "kind": kind, "wait": True,
                                               "memory": "256MiB"})  # fmt: skip


def fds(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def threads(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/task"))


def rss(server: Server) -> int:
    """The server's resident memory, KiB."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def peak_memory(server: Server) -> int:
    """The server's peak resident memory so far, KiB."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def settled(server: Server, baseline: int, timeout: float = SETTLE) -> int:
    """The server's fd count once it is back to `baseline` (or what it is after `timeout`)."""
    deadline = time.monotonic() + timeout
    while (count := fds(server)) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def emptied(directory: Path, timeout: float = SETTLE) -> bool:
    """Whether `directory` is gone or empty (within `timeout`: the server cleans up as the stream ends)."""
    deadline = time.monotonic() + timeout
    while directory.exists() and list(directory.iterdir()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


UPLOAD = b"POST /1.0/instances/import/upload?name=%s HTTP/1.1\r\nHost: virtkit\r\nContent-Length: %d\r\n\r\n"


@contextlib.contextmanager
def raw(server: Server) -> Iterator[socket.socket]:
    """A bare connection to a server's Unix socket, for what an HTTP client will not send."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    try:
        sock.connect(server.url[5:])
        yield sock
    finally:
        sock.close()


def run(client: Client, name: str, *command: str) -> dict[str, Any]:
    import base64

    done = client.request("POST", f"/1.0/instances/{name}/exec", json={"command": list(command)})
    return {"exit_code": done["exit_code"], "stdout": base64.b64decode(done["stdout"]).decode()}


# --- console --------------------------------------------------------------------------------------


def test_console_of_a_container_and_a_vm(api: tuple[Server, Client, Streams]) -> None:
    _server, client, streams = api
    launch(client, "c1", "container")
    launch(client, "v1", "vm")
    with streams.console("c1") as console:
        console.resize(33, 101)
        time.sleep(0.3)
        console.send(b"stty size; echo sum=$((6*7))\n")
        said = console.read_until(b"sum=42", timeout=20)
        assert b"sum=42" in said and b"33 101" in said, said
    with streams.console("v1") as console:
        console.send(b"\necho vm-$((6*7))\n")
        said = console.read_until(b"vm-42", timeout=30)
        assert b"vm-42" in said, said
    with pytest.raises(NotFoundError):
        streams.console("nosuch")
    with streams.console("v1") as console:  # attached while the VM stops: closed, and told why
        client.run("POST", "/1.0/instances/v1/stop", json={"force": True})
        console.read_until(b"never said", timeout=30)
        assert console.closed_reason == "the console closed: the instance stopped"
    with pytest.raises(StateError, match="console is closed"):
        streams.console("v1")


def test_console_client_leaving_mid_stream_or_reading_slowly(api: tuple[Server, Client, Streams]) -> None:
    server, client, streams = api
    launch(client, "c1", "container")
    with streams.console("c1") as console:  # a first session: the server's lazy imports and pools made
        console.send(b"echo warm-$((1+1))\n")
        assert b"warm-2" in console.read_until(b"warm-2", timeout=20)
    baseline, tasks = settled(server, 0, 1.0), threads(server)
    flood = b"i=0; while [ $i -lt 20000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done\n"
    for _ in range(5):  # gone mid-stream, without a close handshake
        console = streams.console("c1")
        console.send(flood)
        assert b"line-" in console.read_until(b"line-1", timeout=20)
        console.connection.socket.shutdown(socket.SHUT_RDWR)
        console.connection.socket.close()
    assert client.info()
    assert settled(server, baseline) <= baseline, os.listdir(f"/proc/{server.process.pid}/fd")

    slow = streams.console("c1")  # asks for 22 MB, then reads nothing for a while
    memory = rss(server)
    slow.send(b"yes 0123456789abcdef0123456789abcdef0123456789 | head -n 500000; echo flood-$((1+1))\n")
    started = time.monotonic()
    for _ in range(10):
        assert client.instances()[0]["name"] == "c1"
    assert time.monotonic() - started < 5, "the server stalled behind a slow console client"
    time.sleep(4)
    assert rss(server) - memory < 16 << 10, "the server buffered what the slow client did not read"
    said = slow.read_until(b"flood-2", timeout=60)  # it still gets everything, in order
    assert said.count(b"0123456789abcdef0123456789abcdef0123456789\r\n") == 500000 and b"flood-2" in said
    slow.close()

    with streams.console("c1") as console:  # and the console still works
        console.send(b"echo after-$((2+2))\n")
        assert b"after-4" in console.read_until(b"after-4", timeout=20)
    assert settled(server, baseline) <= baseline
    assert threads(server) <= tasks + 4


# --- exec -----------------------------------------------------------------------------------------


def test_streamed_exec_arrives_as_written(api: tuple[Server, Client, Streams]) -> None:
    server, client, streams = api
    launch(client, "c1", "container")
    script = "for i in 1 2 3 4 5 6; do echo out$i; echo err$i >&2; sleep 0.5; done; exit 3"
    started = time.monotonic()
    arrivals: list[tuple[float, int, bytes]] = []
    execution = streams.exec("c1", ["sh", "-c", script], timeout=30)
    for fd, data in execution:
        arrivals.append((time.monotonic() - started, fd, data))
    total = time.monotonic() - started
    assert execution.exit_code == 3
    stdout = b"".join(data for _, fd, data in arrivals if fd == 1)
    stderr = b"".join(data for _, fd, data in arrivals if fd == 2)
    assert stdout == b"".join(b"out%d\n" % i for i in range(1, 7)) and b"err6" in stderr
    first = next(at for at, fd, data in arrivals if b"out1" in data)
    assert total >= 2.5 and first < total - 2.0, (first, total)  # the first line came seconds before the end

    with pytest.raises(CommandNotFoundError):
        streams.exec("c1", ["no-such-command"])
    with pytest.raises(NotFoundError):
        streams.exec("nosuch", ["true"])
    with pytest.raises(ToolError, match="did not finish within 1 s"):
        list(streams.exec("c1", ["sleep", "30"], timeout=1))

    baseline = settled(server, 0, 1.0)  # a reader that leaves: the command is killed
    left = streams.exec("c1", ["sh", "-c", "echo started; exec sleep 123"], timeout=60)
    assert next(iter(left)) == (1, b"started\n")
    left.close()
    deadline = time.monotonic() + SETTLE
    while "sleep 123" in run(client, "c1", "ps")["stdout"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "sleep 123" not in run(client, "c1", "ps")["stdout"]
    assert settled(server, baseline) <= baseline
    assert not list((server.root / "instances" / "c1").rglob("exec-*.pid"))


def test_streamed_exec_in_a_vm_comes_whole(api: tuple[Server, Client, Streams]) -> None:
    _server, client, streams = api
    launch(client, "v1", "vm")
    execution = streams.exec("v1", ["sh", "-c", "echo one; echo two >&2; exit 5"], timeout=30)
    pieces = list(execution)
    assert execution.exit_code == 5
    assert b"".join(d for fd, d in pieces if fd == 1) == b"one\n"
    assert b"".join(d for fd, d in pieces if fd == 2) == b"two\n"


# --- export / import ------------------------------------------------------------------------------


def test_export_then_import_into_another_server(
    api: tuple[Server, Client, Streams], tmp_path: Path, servers: Start  # noqa: F811
) -> None:
    server, client, streams = api
    launch(client, "c1", "container")
    write = "echo payload-$((6*7)) >/root/data.txt; head -c $((1<<26)) /dev/urandom >/root/big"
    assert run(client, "c1", "sh", "-c", write)["exit_code"] == 0
    written = run(client, "c1", "md5sum", "/root/big")  # 64 MiB nothing compresses
    archive = tmp_path / "c1.tar.zst"
    peak = peak_memory(server)
    size = streams.export("c1", archive)
    assert size == archive.stat().st_size > 64 << 20 and archive.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert peak_memory(server) - peak < 32 << 10, "the server held the archive in memory"
    assert emptied(server.root / "transfers")

    other = servers(reachable(tmp_path / "other"))  # an empty root: the archive carries the image
    other_client = other.client(timeout=120)
    with Streams(other.url, timeout=120, client=other_client) as other_streams:
        peak = peak_memory(other)
        result = other_streams.import_archive(archive, "c2")
        assert peak_memory(other) - peak < 32 << 10, "the server held the upload in memory"
        assert result["instance"]["name"] == "c2" and result["image_added"]
        other_client.run("POST", "/1.0/instances/c2/start", json={"wait": True})
        try:
            assert run(other_client, "c2", "cat", "/root/data.txt")["stdout"] == "payload-42\n"
            assert run(other_client, "c2", "md5sum", "/root/big")["stdout"] == written["stdout"]
        finally:
            other_client.run("DELETE", "/1.0/instances/c2", params={"force": True})
        assert emptied(other.root / "transfers")

    plain = tmp_path / "c1.tar"  # uncompressed, and read from an open file
    with open(plain, "wb") as file:
        streams.export("c1", file, compress="none", instance_only=True)
    assert plain.read_bytes()[257:262] == b"ustar"
    with pytest.raises(NotFoundError):
        streams.export("nosuch", tmp_path / "nosuch.tar")
    assert not (tmp_path / "nosuch.tar").exists()


def test_download_left_mid_stream(api: tuple[Server, Client, Streams]) -> None:
    server, client, streams = api
    launch(client, "c1", "container")
    with streams.console("c1"):
        pass
    baseline = settled(server, 0, 1.0)
    for _ in range(3):
        request = streams._http.build_request("GET", "/1.0/instances/c1/export", params={"compress": "none"})
        response = streams._http.send(request, stream=True)
        assert response.status_code == 200
        assert len(next(response.iter_raw(4096))) > 0
        response.close()  # gone after the first chunk
    assert emptied(server.root / "transfers", 60)  # once each export has finished, into nothing
    assert client.info()
    assert settled(server, baseline) <= baseline


def test_bad_uploads_leave_the_store_unchanged(api: tuple[Server, Client, Streams], tmp_path: Path) -> None:
    server, client, streams = api
    launch(client, "c1", "container")
    archive = tmp_path / "c1.tar.zst"
    streams.export("c1", archive)
    images = client.request("GET", "/1.0/images")
    before = sorted(i["name"] for i in client.instances())

    data = archive.read_bytes()
    truncated = tmp_path / "truncated.tar.zst"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RejectedError, match=r"truncated\.tar\.zst is truncated or corrupt"):
        streams.import_archive(truncated, "c2")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    hostile = tmp_path / "flipped.tar.zst"
    hostile.write_bytes(bytes(flipped))
    with pytest.raises(RejectedError, match=r"is (truncated or )?corrupt|checksum"):  # zstd or the sha256
        streams.import_archive(hostile, "c3")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(200_000))
    with pytest.raises(SpecError, match="not a virtkit backup"):
        streams.import_archive(garbage, "c4")
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(SpecError, match="empty"):
        streams.import_archive(empty, "c5")
    with pytest.raises(ConflictError, match="already exists"):
        streams.import_archive(archive, "c1")

    baseline = settled(server, 0, 1.0)
    with raw(server) as sock:  # announced over the limit: refused before a byte is read
        sock.sendall(UPLOAD % (b"c6", 1 << 60))
        assert b" 413 " in sock.recv(65536).split(b"\r\n")[0]
    with raw(server) as sock:  # a client that leaves mid-upload: no operation, nothing kept
        sock.sendall(UPLOAD % (b"c7", 50_000_000) + data[:200_000])
        time.sleep(0.5)

    assert sorted(i["name"] for i in client.instances()) == before
    assert client.request("GET", "/1.0/images") == images
    assert emptied(server.root / "transfers")
    assert settled(server, baseline) <= baseline
    assert not [name for name in ("c2", "c3", "c6", "c7") if (server.root / "instances" / name).exists()]


# --- who may ----------------------------------------------------------------------------------------


def test_streams_need_a_token_with_the_operator_role(tmp_path: Path, servers: Start) -> None:  # noqa: F811
    root = reachable(tmp_path / "root")
    server = servers(root, tls=tmp_path / "tls")

    def token(name: str, role: str) -> str:
        made = subprocess.run([str(VIRTKIT), "--root", str(root), "token", "create", name, "--role", role],
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        return made.stdout.strip()

    viewer, operator = token("watcher", "viewer"), token("ops", "operator")
    anonymous = Streams(server.url, certificate=server.cert)
    watcher = Streams(server.url, token=viewer, certificate=server.cert)
    allowed = Streams(server.url, token=operator, certificate=server.cert)
    wrong = Streams(server.url, token="vkt_" + "0" * 40, certificate=server.cert)
    try:
        # The handshake is refused with the server's own 401 document (failures are counted: few).
        with pytest.raises(AuthError, match="a valid API token is required"):
            wrong.console("c1")
        with pytest.raises(AuthError, match="a valid API token is required"):
            anonymous.console("c1")
        with pytest.raises(AuthError, match="this needs operator"):
            watcher.console("c1")
        for refused, why in ((anonymous, "token is required"), (watcher, "this needs operator")):
            with pytest.raises(AuthError, match=why):
                refused.export("c1", tmp_path / "c1.tar")
            with pytest.raises(AuthError, match=why):
                refused.exec("c1", ["true"])
            with pytest.raises(AuthError, match=why):
                refused.import_archive(tmp_path / "tls" / "server.crt")
        assert not (tmp_path / "c1.tar").exists()
        with pytest.raises(NotFoundError):  # let through: there is no such instance
            allowed.console("c1")
        with pytest.raises(NotFoundError):
            allowed.export("c1", tmp_path / "c1.tar")
        with pytest.raises(SpecError, match="not a virtkit backup"):
            allowed.import_archive(tmp_path / "tls" / "server.crt")
        assert emptied(root / "transfers")
    finally:
        for streams in (anonymous, watcher, allowed, wrong):
            streams.close()
