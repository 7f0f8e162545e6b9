"""`virtkit p2v` as a user types it, against a stand-in physical server (tests/e2e/sshhost.py: a
debootstrapped Debian on a block device of its own, its own sshd, in a network namespace).

- `--filesystem` (files over tar+ssh into a new disk) and `--disks auto` (the server's disk read
  whole over ssh) each make a VM that boots (TCG) to the server's host name with its files: a unit
  on the server reports them on the console at boot, and the same script run on the server over
  ssh says what the report must be;
- `--from-image` with a raw disk taken with dd (`cp` of the server's own disk): a disk without a
  bootloader boots the kernel found in its /boot, to the server's host name and files;
- wrong and hostile input (URLs, keys, hosts, images, names) and a server killed mid-copy: a
  clear error, and nothing left in the state root.

Both copies that boot here boot the server's kernel directly (the stand-in's disk has no
bootloader): guest conversion (ops/convert.py) is tried, refused before it touches the guest
(it would rebuild an initrd the VM never boots), and said in a note; the copy keeps emulated
devices. Converting a copy that boots by its own bootloader is not tested here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import VIRTKIT
from tests.e2e.sshhost import (
    NOBODY_IP,
    SERVER_IP,
    SshServer,
    leftovers,
    report_lines,
    sh,
    ssh_server,
    virtkit_in,
)
from tests.e2e.test_cli import assert_clear_error as assert_one_error
from tests.permissions import reachable

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, loop devices and QEMU's confinement need root"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs ssh (apt-get install openssh-client)"),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="needs debootstrap"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]

MiB = 1024 * 1024
COPY_TIMEOUT = 900.0  # a p2v of the ~750 MiB server under a contended 2-core host
BOOT_TIMEOUT = 600.0  # Debian's kernel and systemd, emulated devices, under TCG
TINY_BOOT_TIMEOUT = 180.0
MEMORY = "512MiB"
MID_COPY = re.compile(r"copying files from .*: ([6-9][0-9]|[1-9][0-9]{2})(\.[0-9])?MiB of")

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """The stand-in server, built once per module (~5 s from the cached Debian tree)."""
    began = time.monotonic()
    with ssh_server(tmp_path_factory.mktemp("p2v-server")) as made:
        print(f"stand-in server {made.hostname} up in {time.monotonic() - began:.1f} s")
        yield made


@pytest.fixture
def cli(server: SshServer, tmp_path: Path) -> Iterator[tuple[Run, Path]]:
    """`virtkit ARGS` in the host namespace against the test's own state root; every instance it
    made is deleted at the end (its console printed)."""
    root = reachable(tmp_path / "root")
    assert server.host is not None
    host = server.host

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return virtkit_in(host, root, *args, timeout=timeout)

    yield run, root
    listed = run("list", "--json")
    for instance in json.loads(listed.stdout or "[]") if listed.returncode == 0 else []:
        console = root / "instances" / instance["name"] / "console.log"
        if console.exists():
            print(f"--- console of {instance['name']} ---\n{console.read_text(errors='replace')[-3000:]}")
        run("delete", "--force", instance["name"], timeout=120)
    shutil.rmtree(root, ignore_errors=True)  # its images: this machine's disk is small


def p2v(
    run: Run, server: SshServer, *args: str, timeout: float = COPY_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return run("p2v", "--from", server.url, *server.ssh_options(), *args, timeout=timeout)


def wait_console(root: Path, name: str, *needles: str, timeout: float = BOOT_TIMEOUT) -> str:
    console = root / "instances" / name / "console.log"
    deadline = time.monotonic() + timeout
    while True:
        text = console.read_text(errors="replace") if console.exists() else ""
        if all(needle in text for needle in needles):
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"{name}'s console never showed {needles} in {timeout:g} s:\n{text[-3000:]}")
        time.sleep(1)


def expected_report(server: SshServer) -> list[str]:
    """What the copy must report at boot: what the server reports now, but /tmp (not copied)."""
    lines = report_lines(server.run("/usr/local/sbin/p2v-report"))
    assert lines and f"P2V-REPORT hostname={server.hostname}" in lines
    assert "P2V-REPORT tmp /tmp/not-copied" in lines  # the server has it: the copy must not
    return [line if not line.startswith("P2V-REPORT tmp ") else "P2V-REPORT tmp absent" for line in lines]


def assert_boots_as_the_server(run: Run, root: Path, server: SshServer, name: str) -> None:
    shown = json.loads(run("show", name, "--json").stdout)
    assert shown["state"] == "running", shown
    began = time.monotonic()
    text = wait_console(root, name, "P2V-REPORT end", f"{server.hostname} login:")
    print(f"{name}: booted to its login prompt {time.monotonic() - began:.1f} s after p2v returned")
    assert report_lines(text) == expected_report(server)


def assert_clear_error(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """A user error in one or two lines, after the progress lines shown until then (not a tty)."""
    said = [line for line in done.stderr.splitlines() if not line.startswith("p2v x1: ")]
    assert_one_error(subprocess.CompletedProcess(done.args, done.returncode, done.stdout,
                                                 "\n".join(said) + "\n"), code, *needles)  # fmt: skip


def assert_nothing_left(run: Run, root: Path, name: str = "") -> None:
    assert leftovers(root) == [], leftovers(root)
    if name and (root / "virtkit.db").exists():
        assert json.loads(run("list", "--json").stdout) == []
        assert name not in run("image", "list").stdout


# --- copies that boot ------------------------------------------------------------------------------


def test_filesystem_copy_boots_to_the_servers_name_and_files(
    cli: tuple[Run, Path], server: SshServer
) -> None:
    run, root = cli
    began = time.monotonic()
    done = p2v(run, server, "--filesystem", "--memory", MEMORY, "fs1")
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    print(f"p2v --filesystem of the stand-in server: {took:.1f} s; {done.stdout.strip()}")
    assert f"VM fs1 made of root@{SERVER_IP} (filesystem, " in done.stdout
    assert "boots its own kernel and initrd directly" in done.stdout
    assert "Changed: fstab: / is now UUID=" in done.stderr  # the copy's new filesystem
    said = done.stdout + done.stderr
    assert "not converted (VM fs1 boots the kernel and initrd kept with its image" in said
    image = json.loads(run("image", "show", "fs1", "--json").stdout)
    assert image["properties"]["p2v"] == f"root@{SERVER_IP} (files)"
    assert image["properties"]["boot"] == "direct"
    assert image["properties"]["kernel_version"].endswith("-amd64")
    assert_boots_as_the_server(run, root, server, "fs1")


def test_block_copy_boots_to_the_servers_name_and_files(cli: tuple[Run, Path], server: SshServer) -> None:
    """`--disks auto`: lsblk says the server's / is on its loop disk; that disk is read whole."""
    run, root = cli
    began = time.monotonic()
    done = p2v(run, server, "--disks", "auto", "--no-convert", "--memory", MEMORY, "--json", "bl1")
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    print(f"p2v --disks auto of the stand-in server: {took:.1f} s, {result['copied']} bytes")
    assert (result["mode"], result["boot"], result["hostname"]) == ("block", "direct", server.hostname)
    assert result["copied"] == server.disk.stat().st_size
    assert result["volumes"] == []  # one disk: the image
    assert any("while the server ran" in note for note in result["notes"])
    assert "not converted (--no-convert): the VM keeps emulated devices" in result["notes"]
    assert_boots_as_the_server(run, root, server, "bl1")


def test_an_image_taken_with_dd_boots_to_the_servers_name_and_files(
    cli: tuple[Run, Path], server: SshServer, tmp_path: Path
) -> None:
    """`--from-image`: the server's disk as `dd` would take it (no bootloader on it): its kernel."""
    run, root = cli
    image = tmp_path / "server.img"
    subprocess.run(["cp", "--sparse=always", str(server.disk), str(image)], check=True, timeout=300)
    done = run("p2v", "--from-image", str(image), "--no-convert", "--memory", MEMORY, "--json", "im1",
               timeout=COPY_TIMEOUT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["mode"], result["boot"], result["hostname"]) == ("image", "direct", server.hostname)
    assert result["source"] == str(image)
    assert image.exists()  # the image is read, never changed or taken
    assert_boots_as_the_server(run, root, server, "im1")


# --- wrong and hostile input: a clear error, nothing left -------------------------------------------

BAD_URLS = [
    ("ssh://", "no host"),
    ("http://example.com", "not 'http'"),
    ("root@172.31.252.2", "no scheme"),
    ("ssh://root@host;reboot", "is not a host name"),
    ("ssh://root@$(reboot)", "is not a host name"),
    ("ssh://root@-oProxyCommand=reboot", "is not a host name"),
    ("ssh://root@172.31.252.2:0", "port '0'"),
    ("ssh://root@172.31.252.2:65536", "port '65536'"),
    ("ssh://root@172.31.252.2:22x", "port '22x'"),
    ("ssh://root:secret@172.31.252.2", "passwords in URLs"),
    ("ssh://-lroot@172.31.252.2", "is not a user name"),
    ("ssh://root@172.31.252.2/etc", "path"),
    ("ssh://root@[::1", "IPv6"),
    ("ssh://root@172.31.252.2 -oX", "spaces"),
]


def test_bad_urls_and_options_are_refused_before_anything(cli: tuple[Run, Path], server: SshServer) -> None:
    run, root = cli
    for url, says in BAD_URLS:
        assert_clear_error(run("p2v", "--from", url, "x1"), 2, says)
    assert_clear_error(run("p2v", "x1"), 2, "one of them")
    assert_clear_error(p2v(run, server, "--from-image", str(server.disk), "x1"), 2, "one of them")
    assert_clear_error(p2v(run, server, "--disk", "4GiB", "x1"), 2, "--filesystem")
    assert_clear_error(p2v(run, server, "--filesystem", "--disks", "sda", "x1"), 2, "not with --filesystem")
    assert_clear_error(p2v(run, server, "--disks", "../../etc/x", "x1"), 2, "invalid disk name")
    assert_clear_error(p2v(run, server, "--disks", "sdzz", "x1"), 2, "has no disk 'sdzz'")
    assert_clear_error(p2v(run, server, "--filesystem", "--disk", "1MiB", "x1"), 2, "cannot hold")
    assert_clear_error(run("p2v", "--from", server.url, "../x"), 2)
    assert_nothing_left(run, root, "x1")


def test_host_keys_are_checked_and_unreachable_hosts_fail_fast(
    cli: tuple[Run, Path], server: SshServer, tmp_path: Path
) -> None:
    run, root = cli
    key = ("--identity", str(server.key))
    unknown = tmp_path / "unknown_hosts"
    unknown.write_text("")
    done = run("p2v", "--from", server.url, *key, "--known-hosts", str(unknown), "x1")
    assert_clear_error(done, 1, "host key of root@172.31.252.2 is not known", "--accept-host-key")
    other = tmp_path / "other_hosts"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor"))
    impostor = (tmp_path / "impostor.pub").read_text().split()
    other.write_text(f"{SERVER_IP} {impostor[0]} {impostor[1]}\n")
    for extra in ((), ("--accept-host-key",)):  # accept-new never takes a key that changed
        done = run("p2v", "--from", server.url, *key, "--known-hosts", str(other), *extra, "x1")
        assert_clear_error(done, 1, "is not the one known for it")
    # trusted on first use when asked: the key is remembered, the copy goes on (here to a bad disk)
    done = run("p2v", "--from", server.url, *key, "--known-hosts", str(unknown), "--accept-host-key",
               "--disks", "nosuchdisk", "x1")  # fmt: skip
    assert_clear_error(done, 2, "has no disk 'nosuchdisk'")
    assert server.known_hosts.read_text().split()[2] in unknown.read_text()  # (its name hashed)
    wrong_user = run("p2v", "--from", f"ssh://nobody@{SERVER_IP}", *server.ssh_options(), "x1")
    assert_clear_error(wrong_user, 1, "refused the login")
    began = time.monotonic()
    done = run("p2v", "--from", f"ssh://root@{NOBODY_IP}", *server.ssh_options(), "x1", timeout=60)
    assert_clear_error(done, 1, "cannot reach root@172.31.252.3")
    assert time.monotonic() - began < 30
    done = run("p2v", "--from", f"{server.url}:2222", *server.ssh_options(), "x1")
    assert_clear_error(done, 1, "cannot reach", "Connection refused")
    assert_nothing_left(run, root, "x1")


def test_bad_images_are_refused_and_leave_nothing(cli: tuple[Run, Path], tmp_path: Path) -> None:
    run, root = cli
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n" * 1000)
    base = tmp_path / "base.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M")
    child = tmp_path / "child.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(child))
    full = tmp_path / "full.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", str(full), "64M")
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(full.read_bytes()[:200_000])
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.raw"  # a raw disk with nothing on it: nothing to boot
    with blank.open("wb") as handle:
        handle.truncate(8 * MiB)
    cases = [
        (tmp_path / "missing.img", None, "does not exist"),
        (text, None, ""),
        (child, None, "backing"),
        (cut, None, ""),
        (empty, None, ""),
        (blank, None, "nothing virtkit can boot"),
    ]
    for path, _code, says in cases:
        done = run("p2v", "--from-image", str(path), "x1")
        assert done.returncode != 0, done.stdout
        assert "Traceback" not in done.stderr and "\nError: " in "\n" + done.stderr, done.stderr
        assert says in done.stderr, done.stderr
        assert_nothing_left(run, root, "x1")


def test_a_server_killed_mid_copy_is_a_clear_error_and_leaves_nothing(
    cli: tuple[Run, Path], server: SshServer
) -> None:
    """The stand-in dies while its files are streamed: p2v says so, and undoes what it made."""
    run, root = cli
    assert server.host is not None
    env = {**os.environ, "VIRTKIT_ROOT": str(root)}
    argv = [str(VIRTKIT), "p2v", "--from", server.url, *server.ssh_options(), "--filesystem", "x1"]
    copying = subprocess.Popen(server.host.argv(argv), env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    assert copying.stderr is not None
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(copying.stderr or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + COPY_TIMEOUT
        while not any(MID_COPY.search(line) for line in list(said)):  # 64 MiB or more of ~700 sent
            assert copying.poll() is None, said
            assert time.monotonic() < deadline, "the copy never got far"
            time.sleep(0.01)
        server.kill()
        copying.wait(timeout=COPY_TIMEOUT)
        reader.join(30)
        out = copying.stdout.read() if copying.stdout else ""
    finally:
        if copying.poll() is None:
            copying.kill()
            copying.communicate()
        if server.proc is None:
            server.start()  # for the tests after this one
    err = "".join(said)
    print(f"p2v with its server killed said: {err.strip().splitlines()[-2:]}")
    assert_clear_error(subprocess.CompletedProcess(argv, copying.returncode, out, err), 1,
                       f"ssh to root@{SERVER_IP} failed")  # fmt: skip
    assert_nothing_left(run, root, "x1")
