"""`virtkit file push|pull` as a user types it: a real tiny container (running and stopped) and a
tiny VM (through its agent). Bytes round-trip exactly, owner and mode are applied, `-` is stdin
and stdout; a hostile container's symlinks never lead to the host's files; errors are clear and
nothing is left mounted."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from tests.e2e.conftest import VIRTKIT, Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import tiny  # noqa: F401  (the fixture)


def _mounted_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(path) in line]


def _raw(state_root: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """`virtkit ARGS` with binary stdin and stdout."""
    env = {**os.environ, "VIRTKIT_ROOT": str(state_root)}
    return subprocess.run([str(VIRTKIT), *args], input=stdin, capture_output=True, timeout=120, env=env,
                          check=False)  # fmt: skip


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def test_container_push_pull(tiny: Cli, state_root: Path, tmp_path: Path) -> None:  # noqa: F811
    _ok(tiny("launch", "tiny", "c1", "--container", "--wait", timeout=120))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    pushed = _ok(tiny("file", "push", str(big), "c1/tmp/big.bin", timeout=120))
    assert "Pushed 20MiB to c1:/tmp/big.bin." in pushed.stdout
    _ok(tiny("file", "pull", "c1/tmp/big.bin", str(tmp_path / "back.bin"), timeout=120))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).hexdigest() == digest
    inside = _ok(tiny("exec", "c1", "--", "sha256sum", "/tmp/big.bin")).stdout.split()[0]
    assert inside == digest

    (tmp_path / "app.conf").write_text("key=value\n")
    _ok(tiny("file", "push", str(tmp_path / "app.conf"), "c1/etc/app.conf", "--uid", "1000", "--gid", "100",
             "--mode", "0640"))  # fmt: skip
    listed = _ok(tiny("exec", "c1", "--", "ls", "-ln", "/etc/app.conf")).stdout.split()
    assert listed[0] == "-rw-r-----" and listed[2:4] == ["1000", "100"], listed
    default = _ok(tiny("file", "push", str(tmp_path / "app.conf"), "c1:/etc/default.conf"))  # docker's form
    assert default.stdout
    listed = _ok(tiny("exec", "c1", "--", "ls", "-ln", "/etc/default.conf")).stdout.split()
    assert listed[0] == "-rw-r--r--" and listed[2:4] == ["0", "0"], listed

    data = bytes(range(256)) * 64
    assert _raw(state_root, "file", "push", "-", "c1/root/from-stdin", stdin=data).returncode == 0
    out = _raw(state_root, "file", "pull", "c1/root/from-stdin", "-")
    assert (out.returncode, out.stdout, out.stderr) == (0, data, b"")
    _ok(tiny("file", "pull", "c1/etc/app.conf", str(tmp_path)))  # into a directory
    assert (tmp_path / "app.conf").read_text() == "key=value\n"
    _ok(tiny("pause", "c1"))  # frozen: its files are there all the same
    _ok(tiny("file", "push", str(tmp_path / "app.conf"), "c1/run/paused.conf"))  # /run: its own tmpfs
    _ok(tiny("resume", "c1"))
    assert _ok(tiny("exec", "c1", "--", "cat", "/run/paused.conf")).stdout == "key=value\n"

    # Stopped: the root filesystem is mounted for the copy only.
    _ok(tiny("stop", "c1", timeout=60))
    _ok(tiny("file", "push", str(tmp_path / "app.conf"), "c1/etc/offline.conf"))
    assert _ok(tiny("file", "pull", "c1/etc/offline.conf", "-")).stdout == "key=value\n"
    assert _mounted_under(state_root / "instances" / "c1") == []
    _ok(tiny("start", "c1", "--wait", timeout=120))
    assert _ok(tiny("exec", "c1", "--", "cat", "/etc/offline.conf")).stdout == "key=value\n"


def test_hostile_container_cannot_reach_the_host(tiny: Cli, state_root: Path, tmp_path: Path) -> None:  # noqa: F811
    _ok(tiny("launch", "tiny", "c1", "--container", "--wait", timeout=120))
    secret = tmp_path / "secret-on-host"
    secret.write_text("host secret\n")
    for link in (["/etc", "/escape"], [str(secret), "/x"], ["/root/secret-on-host", "/y"],
                 ["../../../../../../../../etc", "/up"]):  # fmt: skip
        _ok(tiny("exec", "c1", "--", "ln", "-s", *link))
    host_shadow = Path("/etc/shadow").read_bytes()
    for path in ("c1/escape/shadow", "c1/up/shadow"):
        pulled = _raw(state_root, "file", "pull", path, "-")
        assert pulled.stdout != host_shadow and b"root:" in pulled.stdout  # the container's own
    for path in ("c1/x", "c1/y"):
        assert_clear_error(tiny("file", "pull", path, str(tmp_path / "out")), 1, "no such file")
    assert not (tmp_path / "out").exists()
    assert_clear_error(tiny("file", "pull", "c1/proc/1/root/etc/shadow", "-"), 2, "magic link")

    (tmp_path / "f").write_text("pwned\n")
    _ok(tiny("file", "push", str(tmp_path / "f"), "c1/escape/pwned"))
    _ok(tiny("file", "push", str(tmp_path / "f"), "c1/x"))  # the link is replaced, not followed
    assert not Path("/etc/pwned").exists() and secret.read_text() == "host secret\n"
    assert _ok(tiny("exec", "c1", "--", "cat", "/etc/pwned")).stdout == "pwned\n"
    assert _ok(tiny("exec", "c1", "--", "cat", "/x")).stdout == "pwned\n"

    _ok(tiny("exec", "c1", "--", "mkfifo", "/fifo"))
    assert_clear_error(tiny("file", "pull", "c1/fifo", "-"), 2, "is a FIFO: only regular files")
    assert_clear_error(tiny("file", "pull", "c1/dev/null", "-"), 2, "is a character device")
    assert_clear_error(tiny("file", "pull", "c1/etc", str(tmp_path / "etc")), 2, "is a directory")
    assert_clear_error(tiny("file", "push", str(tmp_path / "f"), "c1/etc"), 1, "is a directory")
    assert_clear_error(tiny("file", "push", str(tmp_path / "f"), "c1:etc/x"), 2, "must be absolute")
    assert_clear_error(tiny("file", "push", str(tmp_path / "f"), "c1"), 2, "expected NAME/PATH")
    assert_clear_error(tiny("file", "push", str(tmp_path / "f"), "nope/etc/x"), 1, "not found")
    assert_clear_error(tiny("file", "pull", "nope/etc/hosts", "-"), 1, "not found")
    assert_clear_error(tiny("file", "push", str(tmp_path / "missing"), "c1/etc/x"), 2, "does not exist")
    assert_clear_error(tiny("file", "push", str(tmp_path / "f"), "c1/etc/x", "--mode", "rw"), 2,
                       "invalid mode")  # fmt: skip
    assert_clear_error(tiny("file", "push", str(tmp_path / "f"), "c1/etc/x", "--uid", "70000"), 2,
                       "does not exist in c1's user namespace")  # fmt: skip
    assert not list(tmp_path.glob(".*virtkit-pull"))
    _ok(tiny("stop", "c1", timeout=60))
    assert_clear_error(tiny("file", "pull", "c1/escape/nothing", "-"), 1, "no such file")
    assert _mounted_under(state_root / "instances" / "c1") == []


def test_vm_push_pull_through_the_agent(tiny: Cli, state_root: Path, tmp_path: Path) -> None:  # noqa: F811
    _ok(tiny("launch", "tiny", "vm1", "--vm", "--wait", timeout=180))
    data = os.urandom(100_000)
    (tmp_path / "blob").write_bytes(data)
    _ok(tiny("file", "push", str(tmp_path / "blob"), "vm1/root/blob", "--uid", "7", "--gid", "8",
             "--mode", "0600", timeout=120))  # fmt: skip
    listed = _ok(tiny("exec", "vm1", "--", "ls", "-ln", "/root/blob", timeout=60)).stdout.split()
    assert listed[0] == "-rw-------" and listed[2:5] == ["7", "8", "100000"], listed
    _ok(tiny("file", "pull", "vm1/root/blob", str(tmp_path / "back"), timeout=120))
    assert (tmp_path / "back").read_bytes() == data
    out = _raw(state_root, "file", "pull", "vm1/root/blob", "-")
    assert out.returncode == 0 and out.stdout == data
    assert_clear_error(tiny("file", "pull", "vm1/etc", "-", timeout=60), 2, "is a directory")
    assert_clear_error(tiny("file", "pull", "vm1:root/blob", "-"), 2, "must be absolute")
    _ok(tiny("stop", "vm1", "--force", timeout=60))
    assert_clear_error(tiny("file", "pull", "vm1/root/blob", "-"), 1, "start it first")
