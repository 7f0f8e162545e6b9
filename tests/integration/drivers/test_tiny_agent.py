"""`exec` in a real tiny guest: the image's busybox agent on a virtio-serial port, under TCG.

Builds the tiny image (warm cache: a few seconds), boots it once on microvm without a disk (it
runs from the initramfs, which holds the same tree as the disk) with the port
org.virtkit.agent on a unix socket chardev, then runs every test against that one guest.
QEMU is always killed and reaped.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtkit.drivers.qemu.agent import encode_argv, exec_in_guest, ping_agent
from virtkit.errors import StateError, ToolError
from virtkit.images.tiny import build_tiny
from virtkit.images.tinyinit import AGENT_PORT
from virtkit.ops.images import cache_dir

from ..images.tinyvm import TinyVM, host_tsc_khz

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds a root-owned tree"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt"),
]

CACHE = cache_dir()
READY_TIMEOUT = 30.0


class Guest:
    def __init__(self, vm: TinyVM, agent: Path) -> None:
        self.vm = vm
        self.agent = agent

    def run(self, *argv: str, timeout: float = 20.0, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        result = exec_in_guest(self.agent, argv, timeout, stdin=stdin)
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    staging = tmp_path_factory.mktemp("tiny")
    started = time.monotonic()
    image = build_tiny(staging, cache=CACHE)
    print(f"tiny build: {time.monotonic() - started:.1f} s")
    assert (staging / "rootfs" / "usr" / "lib" / "virtkit" / "agent").is_file()
    workdir = tmp_path_factory.mktemp("vm")
    agent = workdir / "agent.sock"
    tsc = host_tsc_khz()
    tsc_arg = [f"tsc_early_khz={tsc}"] if tsc else []
    append = " ".join([image.properties["cmdline"], "virtkit.root=none", *tsc_arg])
    vm = TinyVM.boot(workdir, machine="microvm", kernel=staging / "vmlinux", initrd=staging / "initrd.img",
                     append=append, devices=[
                         "-device", "virtio-serial-device,id=agentbus",
                         "-chardev", f"socket,id=agent,path={agent},server=on,wait=off",
                         "-device", f"virtserialport,bus=agentbus.0,chardev=agent,name={AGENT_PORT}"])
    try:
        print(f"ready after {vm.wait_ready(READY_TIMEOUT):.2f} s")
        print(f"agent answered after {ping_agent(agent, 20.0):.2f} s more")
        yield Guest(vm, agent)
    finally:
        vm.stop()


def test_uname(guest: Guest) -> None:
    assert guest.run("uname", "-m") == (0, b"x86_64\n", b"")


def test_stdout_stderr_and_exit_code_apart(guest: Guest) -> None:
    assert guest.run("sh", "-c", "echo out; echo err >&2; exit 3") == (3, b"out\n", b"err\n")


def test_binary_output_and_stdin(guest: Guest) -> None:
    every_byte = bytes(range(256))
    assert guest.run("cat", stdin=every_byte) == (0, every_byte, b"")
    escapes = "".join(f"\\{b:03o}" for b in range(256))  # made by the guest's printf, not echoed
    assert guest.run("printf", escapes) == (0, every_byte, b"")


def test_missing_program_is_127(guest: Guest) -> None:
    code, out, err = guest.run("no-such-program", "x")
    assert (code, out) == (127, b"")
    assert b"no-such-program" in err and b"not found" in err


def test_long_output(guest: Guest) -> None:
    started = time.monotonic()
    code, out, _ = guest.run("sh", "-c", "yes 0123456789abcde | head -c 1048576")
    print(f"1 MiB of output in {time.monotonic() - started:.2f} s")
    assert code == 0 and out == (b"0123456789abcde\n" * 65536)


def test_argv_arrives_exactly(guest: Guest) -> None:
    args = ["a b", "it's", 'say "hi"', "new\nline", "tab\there", "ünïcødé ✓", "", "$HOME", "*", "\\n",
            "-n", "`id`", "$(id)", "; exit 9", " lead", "trail ", "\x01\x7f"]
    code, out, err = guest.run("printf", "%s\\0", *args)
    assert (code, err) == (0, b"")
    assert out.split(b"\0")[:-1] == [a.encode() for a in args]
    assert guest.run("sh", "-c", 'printf "%s|" "$0" "$@"', "zero", "o n e", "")[1] == b"zero|o n e||"


def test_timeout_kills_and_the_agent_stays_usable(guest: Guest) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"'sleep' did not finish within 2s in the guest"):
        guest.run("sleep", "100", timeout=2)
    elapsed = time.monotonic() - started
    assert elapsed < 6, f"took {elapsed:.1f} s"
    code, out, _ = guest.run("ps", "-o", "args")
    assert code == 0 and b"sleep 100" not in out, out.decode()
    assert guest.run("echo", "still here") == (0, b"still here\n", b"")


def test_two_execs_in_a_row_and_round_trip(guest: Guest) -> None:
    assert guest.run("echo", "one") == (0, b"one\n", b"")
    assert guest.run("echo", "two") == (0, b"two\n", b"")
    times = []
    for _ in range(5):
        started = time.monotonic()
        assert guest.run("true") == (0, b"", b"")
        times.append(time.monotonic() - started)
    print(f"exec round trip under TCG: best {min(times) * 1000:.0f} ms, worst {max(times) * 1000:.0f} ms")


def test_a_client_that_left_early_does_not_confuse_the_next(guest: Guest) -> None:
    """A reply the guest finishes after its client left is skipped by the next client."""
    argv = encode_argv(["sh", "-c", "sleep 1; echo late"])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(guest.agent))
        sock.sendall(f"EXEC deadbeef 10 {len(argv)} 0\n".encode() + argv)
        time.sleep(0.3)
    assert guest.run("echo", "fresh") == (0, b"fresh\n", b"")


def test_stopped_vm_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not running"):
        exec_in_guest(tmp_path / "agent.sock", ["true"], 5)
