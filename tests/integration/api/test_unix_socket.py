"""The API on the state root's Unix socket: mode 0660, group `virtkit`, its callers admin; the
kernel keeps everyone else out."""

from __future__ import annotations

import grp
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.apiserver import Server
from tests.integration.api.conftest import Http

pytestmark = pytest.mark.root

PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("refused")
else:
    s.sendall(b"GET /1.0 HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
    print(s.recv(100).split(b"\\r\\n")[0].decode())
"""


@pytest.fixture
def unix_server(servers: Callable[..., Server], api_root: Path) -> Server:
    return servers(api_root)


def _connect_as(path: Path, *setpriv: str) -> str:
    done = subprocess.run(["setpriv", *setpriv, "--", sys.executable, "-c", PROBE, str(path)],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_socket_mode_and_group(unix_server: Server, api_root: Path) -> None:
    path = api_root / "unix.socket"
    st = path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, grp.getgrnam("virtkit").gr_gid)


def test_caller_is_admin(unix_server: Server, http: Http) -> None:
    answer = http(unix_server).get("/1.0")
    assert answer.status_code == 200, answer.text
    info = answer.json()
    assert info["caller"] == {"name": "local", "role": "admin"}
    assert info["api_version"] == "1.0"
    assert http(unix_server).get("/1.0/tokens").status_code == 200  # an admin-only route


def test_token_is_not_needed_nor_looked_at(unix_server: Server, http: Http) -> None:
    assert http(unix_server, "garbage").get("/1.0/instances").json() == []


def test_only_root_and_the_virtkit_group_connect(unix_server: Server, api_root: Path) -> None:
    path = api_root / "unix.socket"
    nobody = ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    assert _connect_as(path, *nobody) == "refused"
    group = str(grp.getgrnam("virtkit").gr_gid)
    member = ["--reuid", "nobody", "--regid", "nogroup", "--groups", group]
    assert _connect_as(path, *member) == "HTTP/1.1 200 OK"


def test_socket_removed_on_stop_and_not_stolen(
    servers: Callable[..., Server], unix_server: Server, api_root: Path
) -> None:
    path = api_root / "unix.socket"
    with pytest.raises(AssertionError, match="already listens"):
        servers(api_root)  # a second server must not cut the first one off
    assert unix_server.process.poll() is None
    assert unix_server.stop() == 0
    assert not path.exists()
