"""A stand-in physical server for the p2v tests: a debootstrapped Debian on a block device of its
own, served by its own sshd, in a network namespace; virtkit runs in another one.

    host ns (virtkit, ssh)  172.31.252.1/24 ──veth── 172.31.252.2/24  server ns (sshd)

The server's disk is a loop device over a sparse file holding an ext4 filesystem made with
`mkfs.ext4 -d` from virtkit's cached Debian VM tree (read, never written: the cache stays as it
was). Its sshd runs chrooted into that filesystem, mounted in a mount namespace of its own (with
its own /proc, /sys, /dev, tmpfs /run and /tmp, a UTS namespace with the server's host name and a
PID namespace), so what the server shows over ssh — /proc/self/mounts, `lsblk`, `df`, `hostname`
— is what a real server with one disk shows. Killing the PID namespace's first process (`kill`)
ends every process of the server at once and so its mounts: a server that went away.

The test's own files (`OVERLAY`: host name, fstab, marker files, an sshd host key, root's
authorized key, a unit that reports the markers on the serial console at boot) are copied onto
the filesystem each time the server starts, then synced (a disk copy reads the block device).
The client's known_hosts is written by the test: host keys are checked, never trusted blindly.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.conftest import VIRTKIT
from tests.netns import Namespace

HOST_IP = "172.31.252.1"
SERVER_IP = "172.31.252.2"
NOBODY_IP = "172.31.252.3"  # on the link, nobody answers
DISK_SIZE = 1152 * 1024 * 1024  # the ~750 MiB tree, with room for its boots: read whole by --disks auto
START_TIMEOUT = 60.0
REPORT_BEGIN = "P2V-REPORT begin"
REPORT_END = "P2V-REPORT end"

# Run on the server over ssh and by the copy at boot (onto its console): the same lines from both.
REPORT = r"""#!/bin/sh
echo "P2V-REPORT begin"
echo "P2V-REPORT hostname=$(hostname)"
echo "P2V-REPORT marker=$(cat /srv/p2v/marker.txt)"
cd /srv/p2v && for f in *; do echo "P2V-REPORT file $(sha256sum "$f")"; done
echo "P2V-REPORT stat $(stat -c '%n %a %u:%g %h' /srv/p2v/* /usr/local/bin/p2v-suid | tr '\n' ' ')"
echo "P2V-REPORT link $(readlink /srv/p2v/link)"
echo "P2V-REPORT varkept $(cat /var/tmp/kept 2>&1)"
echo "P2V-REPORT tmp $(ls /tmp/not-copied 2>/dev/null || echo absent)"
echo "P2V-REPORT end"
"""
UNIT = """[Unit]
Description=report the p2v markers on the console
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c '/usr/local/sbin/p2v-report > /dev/console 2>&1'

[Install]
WantedBy=multi-user.target
"""


def debian_tree() -> Path:
    """virtkit's cached Debian VM tree (debootstrapped with a kernel and initrd), made if absent."""
    from virtkit.images import debian
    from virtkit.images.debiancache import cached_tree, tree_key
    from virtkit.ops.images import cache_dir

    cache = cache_dir()
    include = debian.recipe_packages(debian.DEFAULT_RELEASE, "amd64", debian.VM, ())
    name = tree_key(recipe=debian.RECIPE, release=debian.DEFAULT_RELEASE, debarch="amd64", packages=include)

    def make(tree: Path) -> None:
        debian.make_tree(tree, cache=cache, release=debian.DEFAULT_RELEASE, debarch="amd64",
                         include=include, progress=lambda _what, _done: None)  # fmt: skip

    with cached_tree(cache, name, make) as (tree, _hit):
        return tree


def sh(*argv: str, timeout: float = 300, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


@dataclass
class SshServer:
    work: Path
    hostname: str = field(default_factory=lambda: f"p2v-src-{secrets.token_hex(3)}")
    fs_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    host: Namespace | None = None
    server: Namespace | None = None
    loop: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def disk(self) -> Path:
        return self.work / "server-disk.raw"

    @property
    def key(self) -> Path:
        return self.work / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.work / "known_hosts"

    @property
    def log(self) -> Path:
        return self.work / "sshd.log"

    @property
    def url(self) -> str:
        return f"ssh://root@{SERVER_IP}"

    def ssh_options(self) -> list[str]:
        return ["--identity", str(self.key), "--known-hosts", str(self.known_hosts)]

    # --- making it ---------------------------------------------------------------------------

    def build(self) -> None:
        """The disk (from the cached tree), the overlay, the keys and the namespaces."""
        self.work.mkdir(parents=True, exist_ok=True)
        with self.disk.open("wb") as handle:
            handle.truncate(DISK_SIZE)
        sh("mkfs.ext4", "-q", "-F", "-U", self.fs_uuid, "-L", "server-root", "-d", str(debian_tree()),
           str(self.disk), timeout=900)  # fmt: skip
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "p2v-test", "-f", str(self.key))
        self._overlay()
        host_key = (self.overlay / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        self.known_hosts.write_text(f"{SERVER_IP} {host_key[0]} {host_key[1]}\n")
        self.loop = sh("losetup", "--find", "--show", str(self.disk)).strip()
        self.host, self.server = Namespace("vkph"), Namespace("vkps")
        self.host.run(["ip", "link", "add", "p2vh", "type", "veth", "peer", "name", "p2vs",
                       "netns", self.server.name], check=True)  # fmt: skip
        self.host.run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", "p2vh"], check=True)
        self.host.run(["ip", "link", "set", "p2vh", "up"], check=True)
        self.server.run(["ip", "addr", "add", f"{SERVER_IP}/24", "dev", "p2vs"], check=True)
        self.server.run(["ip", "link", "set", "p2vs", "up"], check=True)

    @property
    def overlay(self) -> Path:
        return self.work / "overlay"

    def _overlay(self) -> None:
        o = self.overlay
        for d in ("etc/ssh", "root/.ssh", "srv/p2v", "usr/local/bin", "usr/local/sbin", "var/tmp",
                  "etc/systemd/system/multi-user.target.wants", "etc/cloud"):  # fmt: skip
            (o / d).mkdir(parents=True, exist_ok=True)
        sh(
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "p2v-host",
            "-f",
            str(o / "etc/ssh/ssh_host_ed25519_key"),
        )
        (o / "root/.ssh/authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        (o / "root/.ssh").chmod(0o700)
        (o / "etc/hostname").write_text(f"{self.hostname}\n")
        (o / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.hostname}\n")
        (o / "etc/fstab").write_text(f"UUID={self.fs_uuid} / ext4 errors=remount-ro 0 1\n")
        (o / "etc/cloud/cloud-init.disabled").write_text("a server, not a cloud instance\n")
        (o / "srv/p2v/marker.txt").write_text(f"{self.token}\n")
        (o / "srv/p2v/name with spaces").write_text("spaces survive\n")
        with (o / "srv/p2v/sparse.bin").open("wb") as handle:  # a 64 MiB hole, then data
            handle.seek(64 * 1024 * 1024)
            handle.write(secrets.token_bytes(4096))
        os.link(o / "srv/p2v/marker.txt", o / "srv/p2v/hard")
        (o / "srv/p2v/link").symlink_to("marker.txt")
        (o / "var/tmp/kept").write_text("var/tmp is copied\n")
        suid = o / "usr/local/bin/p2v-suid"
        suid.write_text("#!/bin/sh\ntrue\n")
        suid.chmod(0o4755)
        report = o / "usr/local/sbin/p2v-report"
        report.write_text(REPORT)
        report.chmod(0o755)
        (o / "etc/systemd/system/p2v-report.service").write_text(UNIT)
        (o / "etc/systemd/system/multi-user.target.wants/p2v-report.service").symlink_to(
            "/etc/systemd/system/p2v-report.service"
        )

    # --- running it --------------------------------------------------------------------------

    def _script(self, mnt: Path) -> str:
        m = shlex.quote(str(mnt))
        return f"""set -e
mount {self.loop} {m}
cp -a {shlex.quote(str(self.overlay))}/. {m}/
hostname {shlex.quote(self.hostname)}
mount -t proc proc {m}/proc
mount -t sysfs sysfs {m}/sys
mount --rbind /dev {m}/dev
mount -t tmpfs -o mode=755 tmpfs {m}/run
mkdir -p {m}/run/sshd
mount -t tmpfs -o mode=1777 tmpfs {m}/tmp
echo not copied > {m}/tmp/not-copied
sync
exec chroot {m} /usr/sbin/sshd -D -e -o ListenAddress={SERVER_IP} -o PasswordAuthentication=no
"""

    def start(self) -> None:
        assert self.server is not None and self.proc is None
        mnt = self.work / "mnt"
        mnt.mkdir(exist_ok=True)
        self.log.write_bytes(b"")
        argv = ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child=SIGKILL",
                "--propagation", "private", "sh", "-c", self._script(mnt)]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = self.server.popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while b"Server listening on" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                said = self.log.read_text(errors="replace")
                self.kill()
                raise RuntimeError(f"the stand-in server did not start: {said[-2000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """Every process of the server ends at once (its PID namespace's first one is killed)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def run(self, script: str, timeout: float = 60) -> str:
        """`script` run as root on the server, over ssh from the host namespace."""
        assert self.host is not None
        argv = ["ssh", "-i", str(self.key), "-o", f"UserKnownHostsFile={self.known_hosts}", "-o",
                "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", f"root@{SERVER_IP}", script]  # fmt: skip
        done = self.host.run(argv, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"on the server: {script}: {done.stderr}")
        return done.stdout

    def close(self) -> None:
        self.kill()
        for ns in (self.host, self.server):
            if ns is not None:
                ns.delete()
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True, check=False)
            self.loop = ""
        shutil.rmtree(self.work, ignore_errors=True)


def report_lines(text: str) -> list[str]:
    """The last full report in `text` (a console log or the script's output), without timestamps."""
    lines = [line.strip() for line in text.replace("\r", "").splitlines()]
    begin = max((i for i, line in enumerate(lines) if line.endswith(REPORT_BEGIN)), default=-1)
    if begin < 0:
        return []
    report = []
    for line in lines[begin:]:
        at = line.find("P2V-REPORT ")
        if at >= 0:
            report.append(line[at:])
        if line.endswith(REPORT_END):
            return report
    return []


@contextlib.contextmanager
def ssh_server(work: Path) -> Iterator[SshServer]:
    server = SshServer(work)
    try:
        server.build()
        server.start()
        yield server
    finally:
        server.close()


def virtkit_in(
    ns: Namespace, root: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`virtkit ARGS` run in the namespace `ns` against the state root `root`."""
    env = {**os.environ, "VIRTKIT_ROOT": str(root)}
    return subprocess.run(ns.argv([str(VIRTKIT), *args]), capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)  # fmt: skip


def leftovers(root: Path) -> list[str]:
    """The files and directories a state root holds beyond its database and locks: what a failed
    p2v must not have left (instances, images, volumes, staging files)."""
    if not root.exists():
        return []
    found = []
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if name.startswith("virtkit.db") or (path.is_dir() and any(path.iterdir())):
            continue
        if name.split("/")[0] in ("locks", "run"):
            continue
        found.append(name + ("/" if path.is_dir() else ""))
    return found


def listed(ns: Namespace, root: Path, *what: str) -> object:
    done = virtkit_in(ns, root, *what, "--json")
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else done.stderr
