"""A default container's confinement, proven by behaviour: from a shell inside one tiny system
container, each escape a user (or an intruder) would try is refused, and for the right reason —
the kernel's EPERM/EROFS from seccomp, a missing capability, the device cgroup or a read-only
mount, never "command not found".

What a default container is promised (bundle.py, seccomp.py, docs/containers.md): Docker's 14
capabilities (CAP_NET_RAW among them, as in Docker, so root inside may ping; a non-root user inside
has none), no_new_privs, the seccomp allowlist, masked and read-only /proc paths, a read-only /sys
and cgroup tree, a device allowlist, its own PID, network, IPC, UTS, mount and cgroup namespaces.

Not attempted, on purpose: ptrace of the container's own PID 1 is allowed (as in Docker, by the
profile and by the kernel, same uid and capabilities); what matters, that no host process can be
named at all, is tested. This host's kernel has no /proc/kcore, no /proc/sysrq-trigger and no
module support: those attempts check that the container sees no more than the host has, and the
module attempt checks that the refusal (EPERM) comes before the kernel, which would say ENOSYS.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import VIRTKIT, Cli
from tests.permissions import reachable
from virtkit.drivers.oci.bundle import ALL_CAPS, DEFAULT_CAPS

NAME = "c1"
EPERM = "Operation not permitted"
EROFS = "Read-only file system"
BUSYBOX_EPERM = r"permission denied \(are you root\?\)"  # busybox's words for EPERM/EACCES
AS_NOBODY = "su -s /bin/sh nobody -c"


@dataclass
class Box:
    """The one container every attempt runs in, and the state root it lives under."""

    virtkit: Cli
    root: Path

    def sh(self, script: str) -> subprocess.CompletedProcess[str]:
        return self.virtkit("exec", NAME, "--", "sh", "-c", script)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    root = reachable(tmp_path_factory.mktemp("security") / "root")

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VIRTKIT_ROOT": str(root)}
        return subprocess.run([str(VIRTKIT), *args], capture_output=True, text=True, timeout=timeout,
                              env=env, check=False)  # fmt: skip

    built = run("image", "build", "tiny", "--json", timeout=300)
    assert built.returncode == 0, built.stderr
    launched = run("launch", "tiny", NAME, "--container", "--wait", timeout=120)
    try:
        assert launched.returncode == 0, launched.stderr
        yield Box(run, root)
    finally:
        for instance in json.loads(run("list", "--json").stdout or "[]"):
            run("delete", "--force", instance["name"], timeout=60)
        assert not [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(root) in line]


NOENT = "No such file or directory"
# (what is tried, the shell command inside, the reason it must fail with). {root} is the state
# root and {secret} a file beside it, both on the host.
ATTEMPTS = [
    # Mounting anything, or making a namespace in which one could: mount, umount2, unshare, setns
    # and pivot_root are outside the seccomp allowlist (and CAP_SYS_ADMIN is not granted).
    ("mount-tmpfs", "mount -t tmpfs none /mnt", BUSYBOX_EPERM),
    ("mount-proc", "mount -t proc proc /mnt", BUSYBOX_EPERM),
    ("mount-bind", "mount --bind / /mnt", BUSYBOX_EPERM),
    ("remount-proc-sys-rw", "mount -o remount,rw /proc/sys", BUSYBOX_EPERM),
    ("unmask-proc-keys", "umount /proc/keys", f"can't unmount /proc/keys: {EPERM}"),
    ("unshare-mount", "unshare -m true", rf"unshare\(0x20000\): {EPERM}"),
    ("unshare-user", "unshare -U true", rf"unshare\(0x10000000\): {EPERM}"),
    ("unshare-user-as-root", "unshare -r true", rf"unshare\(0x10000000\): {EPERM}"),
    ("unshare-pid", "unshare -p -f true", rf"unshare\(0x20000000\): {EPERM}"),
    ("nsenter-init", "nsenter -t 1 -m -u -i -n true", f"setns.*{EPERM}"),
    ("pivot-root", "mkdir -p /tmp/new/old && pivot_root /tmp/new /tmp/new/old", EPERM),
    # Kernel-wide files: /proc/sys and the cgroup tree are read-only mounts.
    ("write-hostname-sysctl", "echo evil > /proc/sys/kernel/hostname", f"kernel/hostname: {EROFS}"),
    ("write-domainname", "echo evil > /proc/sys/kernel/domainname", f"kernel/domainname: {EROFS}"),
    ("write-core-pattern", "echo '|/tmp/x' > /proc/sys/kernel/core_pattern", f"core_pattern: {EROFS}"),
    ("sysctl-w", "sysctl -w kernel.hostname=evil", f"kernel.hostname': {EROFS}"),
    ("write-ip-forward", "echo 1 > /proc/sys/net/ipv4/ip_forward", f"ip_forward: {EROFS}"),
    ("raise-pids-limit", "echo max > /sys/fs/cgroup/pids/pids.max", f"pids.max: {EROFS}"),
    ("raise-memory-limit", "echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes", f"bytes: {EROFS}"),
    ("sethostname", "hostname evil", f"sethostname: {EPERM}"),
    ("kernel-log", "dmesg", f"klogctl: {EPERM}"),
    ("swapon", "head -c 65536 /dev/zero >/tmp/swap && mkswap /tmp/swap && swapon /tmp/swap", EPERM),
    # /proc/kcore and /proc/sysrq-trigger: masked and read-only where the host's kernel has them
    # (test_host_wide_files_are_masked reads kcore); this host's has neither, nor has the container.
    ("write-sysrq-trigger", "echo h > /proc/sysrq-trigger",
     EROFS if Path("/proc/sysrq-trigger").exists() else "sysrq-trigger: nonexistent directory"),
    *([] if Path("/proc/kcore").exists() else [("read-kcore", "cat /proc/kcore", NOENT)]),
    # Kernel modules: init_module/finit_module/delete_module are outside the allowlist (and
    # CAP_SYS_MODULE is not granted). A kernel would answer a random file with ENOEXEC (Invalid
    # module format), or ENOSYS without module support (as here): EPERM is the refusal before it.
    ("insmod", "head -c 4096 /dev/urandom >/tmp/evil.ko && insmod /tmp/evil.ko", f"evil.ko': {EPERM}"),
    ("insmod-elf", r"printf '\177ELF\002\001\001' >/tmp/elf.ko && insmod /tmp/elf.ko", f"elf.ko': {EPERM}"),
    ("rmmod", "rmmod loop", f"can't unload module 'loop': {EPERM}"),
    # Raw sockets without the capability: a non-root user inside has no capability at all.
    ("raw-socket-ping-as-nobody", f"{AS_NOBODY} 'ping -c1 -W1 127.0.0.1'", BUSYBOX_EPERM),
    ("raw-socket-traceroute-as-nobody", f"{AS_NOBODY} 'traceroute -m1 127.0.0.1'", f"socket: {EPERM}"),
    ("packet-socket-arping-as-nobody", f"{AS_NOBODY} 'arping -c1 -w1 -I lo 127.0.0.1'", f"socket: {EPERM}"),
    # The network: its own namespace, and no CAP_NET_ADMIN to change even that.
    ("add-link", "ip link add evil0 type dummy", f"RTNETLINK answers: {EPERM}"),
    ("tun-device", "mkdir -p /dev/net && mknod /dev/net/tun c 10 200; tunctl -t evil0", EPERM),
    # Devices: a node can be made (runc's own rule) but the device cgroup refuses to open it;
    # the host's own nodes are not in the container's /dev at all.
    ("open-disk", "mknod /tmp/sda b 8 0; head -c1 /tmp/sda", f"/tmp/sda: {EPERM}"),
    ("open-mem", "mknod /tmp/mem c 1 1; head -c1 /tmp/mem", f"/tmp/mem: {EPERM}"),
    ("open-kmsg", "mknod /tmp/kmsg c 1 11; head -c1 /tmp/kmsg", f"/tmp/kmsg: {EPERM}"),
    ("host-dev-sda", "head -c1 /dev/sda", NOENT),
    ("host-dev-kvm", "head -c1 /dev/kvm", NOENT),
    ("devmem", "devmem 0", f"can't open '/dev/mem': {NOENT}"),
    # The clock is the host's: settimeofday/clock_settime are denied, and CAP_SYS_TIME absent.
    ("set-clock", "date -s 2000-01-01 >/dev/null; test $(date +%Y) = 2000", f"can't set date: {EPERM}"),
    ("adjust-clock", "adjtimex -f 0", EPERM),
    # Host-only paths: not in the container's tree, nor reachable through /proc or by climbing.
    ("read-host-file", "cat {secret}", NOENT),
    ("read-host-file-via-proc-1-root", "cat /proc/1/root{secret}", NOENT),
    ("read-state-db", "cat {root}/virtkit.db", NOENT),
    ("list-state-root", "ls {root}", NOENT),
    ("climb-out", "cd /../../../..{root}", "can't cd"),
]  # fmt: skip


@dataclass
class Tried:
    returncode: int
    output: str


@pytest.fixture(scope="module")
def tried(box: Box) -> dict[str, Tried]:
    """Every attempt, each in its own `sh -c` inside one `virtkit exec c1 -- sh -c ...` (one exec
    each would take a minute on a busy host: virtkit's exec costs about a second): its exit code
    and what it said, stdout and stderr together."""
    secret = box.root.parent / "host-secret"
    secret.write_text("host only\n")
    runner = "".join(
        f"echo @@{what}; timeout 20 sh -c {shlex.quote(script)} 2>&1; rc=$?; echo; echo @@rc $rc; "
        for what, script, _ in ATTEMPTS
    )
    done = box.sh(runner.replace("{root}", str(box.root)).replace("{secret}", str(secret)))
    assert done.returncode == 0, done.stderr
    records = done.stdout.split("@@")[1:]  # NAME\nwhat it said\n, then rc CODE\n
    results = {}
    for head, tail in zip(records[::2], records[1::2], strict=True):
        what, _, said = head.partition("\n")
        results[what] = Tried(int(tail.split()[1]), said)
    assert list(results) == [a[0] for a in ATTEMPTS], done.stdout
    return results


@pytest.mark.parametrize(("what", "reason"), [(a[0], a[2]) for a in ATTEMPTS], ids=[a[0] for a in ATTEMPTS])
def test_escape_attempt_is_refused(tried: dict[str, Tried], what: str, reason: str) -> None:
    result = tried[what]
    assert result.returncode not in (0, 127), result.output
    assert ": not found" not in result.output and "applet not found" not in result.output, result.output
    assert re.search(reason, result.output), result.output


def test_nothing_got_mounted_and_proc_sys_stays_read_only(box: Box) -> None:
    mounts = box.sh("mount -t tmpfs none /mnt; mount --bind / /mnt; cat /proc/self/mounts").stdout
    assert " /mnt " not in mounts
    assert "proc /proc/sys proc ro," in mounts and "sysfs /sys sysfs ro," in mounts, mounts


def test_host_wide_files_are_masked(box: Box) -> None:
    # Masked: /dev/null over a file, an empty read-only tmpfs over a directory. The host's have
    # content (or this would prove nothing); kcore only where the host's kernel has one.
    paths = [
        p for p in ("/proc/keys", "/proc/timer_list", "/proc/kcore", "/sys/firmware") if Path(p).exists()
    ]
    assert Path("/proc/keys").read_text() and any(Path("/sys/firmware").iterdir())
    script = "; ".join(
        f"echo $(stat -c '%F %t,%T' {p}) $(ls -A {p} | wc -l) $(cat {p} | wc -c)" for p in paths
    )
    inside = dict(zip(paths, box.sh(script).stdout.splitlines(), strict=True))
    for path, seen in inside.items():
        if Path(path).is_dir():
            assert seen == "directory 0,0 0 0", (path, seen)
        else:
            assert seen == "character special file 1,3 1 0", (path, seen)  # /dev/null: empty


def _caps_mask(names: tuple[str, ...]) -> int:
    return sum(1 << ALL_CAPS.index(name) for name in names)


def test_capabilities_no_new_privs_and_seccomp(box: Box) -> None:
    status = box.sh("grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status").stdout
    fields = dict(line.split(":\t") for line in status.splitlines())
    assert int(fields["CapEff"], 16) == int(fields["CapBnd"], 16) == _caps_mask(DEFAULT_CAPS)
    assert int(fields["CapInh"], 16) == int(fields["CapAmb"], 16) == 0
    assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("1", "2")  # 2: a seccomp filter
    nobody = box.sh(f"{AS_NOBODY} 'id -u; grep -E \"^Cap(Prm|Eff)\" /proc/self/status'").stdout.split()
    assert nobody == ["65534", "CapPrm:", "0" * 16, "CapEff:", "0" * 16], nobody


def test_root_inside_has_net_raw_as_promised(box: Box) -> None:
    # Docker's set keeps CAP_NET_RAW: root inside may ping, in the container's own network only.
    done = box.sh("ping -c1 -W2 127.0.0.1 && ip -o link")
    assert done.returncode == 0 and "1 packets received" in done.stdout, done.stderr
    links = [line.split(":")[1].strip() for line in done.stdout.splitlines() if ": <" in line]
    assert links == ["lo"], done.stdout  # no host interface


def test_no_host_process_is_visible(box: Box) -> None:
    marker = f"virtkit-host-marker-{uuid.uuid4().hex[:12]}"
    sleeper = subprocess.Popen([marker, "60"], executable="/bin/sleep")
    try:
        deadline = time.monotonic() + 10
        while marker not in Path(f"/proc/{sleeper.pid}/cmdline").read_text():  # the host sees it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        listed = box.sh(
            "ps -o pid,args; cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo @@; "
            # busybox timeout leaves a watcher, a child of init, for up to a second after each
            # attempt: left aside, as are those gone between the glob and the read of their name
            "for p in /proc/[0-9]*; do c=$(cat $p/comm 2>/dev/null) || continue; "
            "[ \"$c\" = timeout ] || echo $p; done"
        )
    finally:
        sleeper.kill()
        sleeper.wait()
    assert listed.returncode == 0, listed.stderr
    assert marker not in listed.stdout and "conmon" not in listed.stdout, listed.stdout
    host_init = Path("/proc/1/cmdline").read_text().split("\0")[0]
    if host_init not in ("/sbin/init", "init"):
        assert host_init not in listed.stdout, listed.stdout
    assert re.search(r"^ +1 +(/sbin/)?init$", listed.stdout, re.M), listed.stdout  # its own PID 1
    pids = listed.stdout.split("@@")[-1].split()
    assert len(pids) < 10, listed.stdout  # init, its shell, this shell and cat: not the host's hundreds


def test_only_allowed_devices_exist(box: Box) -> None:
    # net: the tun attempt above made /dev/net/tun itself; console: only with a terminal.
    allowed = {"fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
               "stdout", "tty", "urandom", "zero", "net", "console"}  # fmt: skip
    present = set(box.sh("ls /dev").stdout.split())
    assert present <= allowed, present - allowed


def test_the_image_has_its_own_etc_shadow(box: Box) -> None:
    inside = box.sh("cat /etc/shadow /proc/1/root/etc/shadow")
    assert inside.returncode == 0 and inside.stdout, inside.stderr
    assert Path("/etc/shadow").read_text() not in inside.stdout
