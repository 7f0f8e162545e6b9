"""config.json from `build_config`, run by the real runc: the default confinement holds, and still
lets a busybox shell, busybox init and (when a Debian tree is cached) systemd work.

Each container runs in the foreground (`runc run`, stdin /dev/null, no terminal) under its own
runc state root in tmp and the cgroup /virtkit-test/NAME. Teardown runs `runc delete -f` and
removes the cgroups in every hierarchy (found in /proc/self/mountinfo), then checks none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.permissions import reachable
from virtkit.drivers.oci.bundle import ALL_CAPS, build_config
from virtkit.drivers.oci.spec import ContainerSpec, IdMap
from virtkit.ops.images import cache_dir

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="runc needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc"),
    pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="needs busybox-static"),
]

CGROUP_PARENT = "/virtkit-test"
RUN_TIMEOUT = 30.0
HOST_ID = 100000
BLKIO = Path("/sys/fs/cgroup/blkio")
DEFAULT_CAP_MASK = 0xA80425FB  # Docker's 14 capabilities as /proc/PID/status prints them
INITTAB = "::sysinit:/bin/echo booted\n::respawn:/bin/sleep 1000\n::shutdown:/bin/echo shutting down\n"


def _cgroup_mounts() -> list[Path]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        if rest.split()[0] in ("cgroup", "cgroup2"):
            mounts.append(Path(fields.split()[4]))
    return mounts


def _systemd_hierarchy() -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        if rest.split()[0] == "cgroup" and "name=systemd" in rest.split()[2].split(","):
            return fields.split()[4]
    return ""


def _remove_cgroups(relative: str) -> None:
    for mount in _cgroup_mounts():
        top = mount / relative.lstrip("/")
        if top.is_dir():  # children first: systemd makes its own below ours
            for directory, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                os.rmdir(directory)


def _nofile() -> tuple[int, int]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # runc cannot raise the hard limit
    return min(1024, hard), hard


def _busybox_rootfs(dest: Path) -> Path:
    for sub in ("bin", "sbin", "proc", "sys", "dev", "tmp", "mnt", "run", "etc"):
        (dest / sub).mkdir(parents=True)
    shutil.copy2("/bin/busybox", dest / "bin" / "busybox")
    applets = subprocess.run([dest / "bin" / "busybox", "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            (dest / "bin" / applet).symlink_to("busybox")
    (dest / "sbin" / "init").symlink_to("../bin/busybox")
    (dest / "etc" / "inittab").write_text(INITTAB)
    return dest


@dataclass
class Runc:
    """Runs specs with runc under a private state root; remembers every container to reap it."""

    tmp: Path
    names: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def spec(self, rootfs: Path, *args: str, **overrides: Any) -> ContainerSpec:
        name = f"vkt-{secrets.token_hex(4)}"
        values: dict[str, Any] = dict(
            name=name, uuid=str(uuid.uuid4()), hostname=name, rootfs=str(rootfs), args=args,
            cgroup=f"{CGROUP_PARENT}/{name}", nofile=_nofile(),
        )  # fmt: skip
        values.update(overrides)
        return ContainerSpec(**values)

    def argv(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.tmp / "runc"), *args]

    def bundle(self, spec: ContainerSpec) -> Path:
        bundle = self.tmp / "bundles" / spec.name
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(build_config(spec), indent=2))
        self.names.append(spec.name)
        return bundle

    def run(self, spec: ContainerSpec) -> subprocess.CompletedProcess[str]:
        argv = self.argv("run", "-b", str(self.bundle(spec)), spec.name)
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
        print(f"{spec.args}: rc {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}")
        return done

    def sh(self, rootfs: Path, script: str, **overrides: Any) -> subprocess.CompletedProcess[str]:
        return self.run(self.spec(rootfs, "/bin/sh", "-c", script, **overrides))

    def start(self, spec: ContainerSpec, log: Path) -> subprocess.Popen[bytes]:
        """`runc run` in the background, its output (the container's console) to `log`."""
        bundle = self.bundle(spec)
        self.logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen(
                self.argv("run", "-b", str(bundle), spec.name),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def exec(self, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv("exec", name, *argv), capture_output=True, text=True, timeout=RUN_TIMEOUT
        )

    def kill(self, name: str, sig: int) -> None:
        subprocess.run(self.argv("kill", name, str(sig)), check=True, timeout=RUN_TIMEOUT)

    def reap(self) -> None:
        for log in self.logs:  # pytest shows this only for a failed test
            print(
                f"----- {log} -----\n{log.read_text(errors='replace')[-3000:] if log.exists() else '(none)'}"
            )
        for name in self.names:
            subprocess.run(self.argv("delete", "-f", name), capture_output=True, timeout=RUN_TIMEOUT)
            _remove_cgroups(f"{CGROUP_PARENT}/{name}")
        for mount in _cgroup_mounts():
            with contextlib.suppress(OSError):  # another test's container may still be there
                (mount / CGROUP_PARENT.lstrip("/")).rmdir()
        left = [m / CGROUP_PARENT.lstrip("/") / n for m in _cgroup_mounts() for n in self.names]
        assert not [p for p in left if p.exists()], "cgroups left behind"


@pytest.fixture
def runc(tmp_path: Path) -> Iterator[Runc]:
    runner = Runc(tmp_path)
    yield runner
    runner.reap()


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


def _status(text: str, key: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"{key}:")]
    return line.split(":", 1)[1].strip()


# --- the default application container -------------------------------------------------------


def test_a_shell_runs_and_exit_codes_pass_through(runc: Runc, rootfs: Path) -> None:
    started = time.monotonic()
    done = runc.sh(rootfs, "echo ok")
    print(f"runc run, sh -c 'echo ok': {time.monotonic() - started:.2f} s")
    assert (done.returncode, done.stdout) == (0, "ok\n")
    assert runc.sh(rootfs, "exit 7").returncode == 7


def test_the_process_is_confined(runc: Runc, rootfs: Path) -> None:
    done = runc.sh(rootfs, "cat /proc/self/status; id -u; cat /proc/self/limits")
    assert done.returncode == 0, done.stderr
    assert _status(done.stdout, "Seccomp") == "2" and _status(done.stdout, "NoNewPrivs") == "1"
    for kind in ("CapEff", "CapPrm", "CapBnd"):
        assert int(_status(done.stdout, kind), 16) == DEFAULT_CAP_MASK
    assert int(_status(done.stdout, "CapInh"), 16) == 0 == int(_status(done.stdout, "CapAmb"), 16)
    soft, hard = _nofile()
    assert any(line.split()[-3:] == [str(soft), str(hard), "files"] for line in done.stdout.splitlines())


def test_mount_is_refused(runc: Runc, rootfs: Path) -> None:
    done = runc.sh(rootfs, "mount -t tmpfs none /mnt")
    assert done.returncode != 0
    assert "permission denied" in done.stderr  # busybox's words for EPERM


def test_kernel_files_in_proc_are_masked_or_read_only(runc: Runc, rootfs: Path) -> None:
    # /proc/kcore (absent on some kernels) and /proc/timer_list (root-readable on the host) give
    # nothing; /proc/sys is read-only.
    assert Path("/proc/timer_list").read_bytes()
    done = runc.sh(rootfs, "cat /proc/kcore | wc -c; cat /proc/timer_list | wc -c")
    assert done.stdout.split() == ["0", "0"]
    done = runc.sh(rootfs, "echo other > /proc/sys/kernel/hostname")
    assert done.returncode != 0 and "Read-only file system" in done.stderr


def test_new_namespaces_are_refused(runc: Runc, rootfs: Path) -> None:
    for flags in ("-U", "-m", "-n"):
        done = runc.sh(rootfs, f"unshare {flags} true")
        assert done.returncode != 0 and "Operation not permitted" in done.stderr, flags


def test_devices_beyond_the_default_set_cannot_be_opened(runc: Runc, rootfs: Path) -> None:
    # runc 1.1 lets any node be made (its own "m" rules), but the device cgroup refuses opening one.
    done = runc.sh(
        rootfs, "echo x > /dev/null && head -c 4 /dev/urandom | wc -c && mknod /dev/sdx b 8 0 && cat /dev/sdx"
    )
    assert done.stdout.split() == ["4"]
    assert done.returncode != 0 and "Operation not permitted" in done.stderr


def test_a_missing_command_is_runcs_own_failure(runc: Runc, rootfs: Path) -> None:
    done = runc.run(runc.spec(rootfs, "/nonexistent"))
    assert done.returncode == 1  # runc's failure to start, not the process's: no 127 as in a shell
    assert "no such file or directory" in done.stderr


# --- a system container (busybox init), limits, a user namespace -------------------------------


def _shifted(rootfs: Path, dest: Path, host_id: int) -> Path:
    """A copy of `rootfs` owned by the user namespace's root (runc 1.1 has no idmapped mounts)."""
    shutil.copytree(rootfs, dest, symlinks=True)
    for path in [dest, *dest.rglob("*")]:
        os.lchown(path, host_id, host_id)
    return dest


def _io_weight_works() -> bool:
    """Whether runc can set an I/O weight here: cgroup v1 has one only with the BFQ (or the old CFQ)
    scheduler; on a host whose disks use mq-deadline (as these VMs, some days) runc fails to start."""
    return any((BLKIO / name).exists() for name in ("blkio.bfq.weight", "blkio.weight"))


def test_busybox_init_in_a_user_namespace_with_limits(runc: Runc, rootfs: Path, tmp_path: Path) -> None:
    # The namespace's root is no host root: it needs o+x on the directories above its rootfs.
    shifted = reachable(_shifted(rootfs, tmp_path / "rootfs-shifted", HOST_ID))
    spec = runc.spec(
        shifted, "/sbin/init", system=True, memory=64 * 1024 * 1024, pids=64, cpu_quota=50_000,
        cpuset="0", io_weight=500 if _io_weight_works() else None, uid_maps=(IdMap(0, HOST_ID, 65536),),
    )  # fmt: skip
    init = runc.start(spec, tmp_path / "console.log")
    script = (
        "cat /proc/self/uid_map; touch /tmp/written && echo written; env | grep ^container=; "
        "cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes pids/pids.max cpu/cpu.cfs_quota_us "
        "cpuset/cpuset.cpus; grep -E ' /run | /run/lock ' /proc/mounts | cut -d' ' -f2,3"
    )
    try:
        done = _exec_when_running(runc, init, spec.name, "/bin/sh", "-c", script)
        assert done.stdout.split() == [
            "0", str(HOST_ID), "65536", "written", "container=virtkit",
            str(64 * 1024 * 1024), "64", "50000", "0", "/run", "tmpfs", "/run/lock", "tmpfs",
        ]  # fmt: skip
        assert runc.exec(spec.name, "unshare", "-U", "true").returncode != 0
        started = time.monotonic()
        runc.kill(spec.name, signal.SIGUSR2)  # busybox init: power off
        # reboot(2) is denied (no CAP_SYS_BOOT, not in the profile): init still ends by itself.
        assert init.wait(timeout=RUN_TIMEOUT) == 0
        print(f"busybox init powered off in {time.monotonic() - started:.2f} s")
    finally:
        init.kill()
        init.wait()
    log = (tmp_path / "console.log").read_text()
    assert "booted" in log and "shutting down" in log, log


def _exec_when_running(
    runc: Runc, init: subprocess.Popen[bytes], name: str, *argv: str
) -> subprocess.CompletedProcess[str]:
    """`runc exec` once the container exists (`runc run` has just been started): bounded."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        done = runc.exec(name, *argv)
        if done.returncode == 0 or "does not exist" not in done.stderr or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr
            return done
        assert init.poll() is None, f"the container ended (runc run: {init.returncode}); see its console log"
        time.sleep(0.1)


def test_privileged_with_the_callers_capabilities(runc: Runc, rootfs: Path) -> None:
    # runc cannot grant a capability its caller lacks: give it those in our bounding set.
    bounding = int(_status(Path("/proc/self/status").read_text(), "CapBnd"), 16)
    caps = tuple(cap for bit, cap in enumerate(ALL_CAPS) if bounding >> bit & 1)
    script = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; mount -t tmpfs none /mnt && echo mounted"
    done = runc.sh(rootfs, script, privileged=True, caps=caps)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NoNewPrivs:", "0", "Seccomp:", "0", "mounted"]


# --- systemd ---------------------------------------------------------------------------------


def _debian_tree() -> Path | None:
    trees = sorted(cache_dir().glob("debian/trees/*/tree"))
    return next((t for t in trees if (t / "lib/systemd/systemd").exists()), None)


@pytest.fixture
def debian_rootfs(tmp_path: Path) -> Iterator[Path]:
    """A writable overlay on the cached Debian tree (which stays untouched)."""
    tree = _debian_tree()
    if tree is None:
        pytest.skip("no cached Debian tree with systemd (the Debian image tests build one)")
    upper, work, merged = (tmp_path / d for d in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    options = f"lowerdir={tree},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    yield merged
    subprocess.run(["umount", str(merged)], check=True)


def test_systemd_boots_under_the_default_profile(runc: Runc, debian_rootfs: Path, tmp_path: Path) -> None:
    hierarchy = _systemd_hierarchy()
    if not hierarchy:
        pytest.skip("no cgroup v1 name=systemd hierarchy on this host")
    spec = runc.spec(debian_rootfs, "/sbin/init", system=True, systemd_hierarchy=hierarchy)
    console = tmp_path / "console.log"
    started = time.monotonic()
    init = runc.start(spec, console)
    try:
        state = _wait_booted(runc, init, spec.name, console)
        print(f"systemd: {state} after {time.monotonic() - started:.2f} s")
        # journald, dbus, logind, and resolved (OpenSSL: needs getrandom) run with the profile.
        units = ("systemd-journald", "dbus", "systemd-logind", "systemd-resolved")
        done = runc.exec(spec.name, "systemctl", "is-active", *units)
        assert done.stdout.split() == ["active"] * len(units), done.stdout
        # Its own cgroups are made; the limits stay read-only.
        done = runc.exec(spec.name, "sh", "-c", "ls /sys/fs/cgroup/systemd; touch /sys/fs/cgroup/memory/x")
        assert "system.slice" in done.stdout.split() and "Read-only file system" in done.stderr
        runc.kill(spec.name, signal.SIGRTMIN + 3)  # halt; runc 1.1 takes no "RTMIN+3" name
        assert init.wait(timeout=RUN_TIMEOUT) == 0
    finally:
        init.kill()
        init.wait()


def _wait_booted(runc: Runc, init: subprocess.Popen[bytes], name: str, console: Path) -> str:
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        assert init.poll() is None, f"systemd ended:\n{console.read_text()[-3000:]}"
        state = runc.exec(name, "systemctl", "is-system-running").stdout.strip()
        if state in ("running", "degraded"):  # degraded: the image's ssh has no host keys
            return state
        time.sleep(0.2)
    raise AssertionError(f"systemd did not finish booting:\n{console.read_text()[-3000:]}")


def test_glibc_falls_back_from_clone3_to_filtered_clone(runc: Runc, debian_rootfs: Path) -> None:
    # clone3 gives ENOSYS (its flags are out of seccomp's reach); glibc's threads and
    # posix_spawn then use clone, whose flags the profile checks.
    script = (
        "import ctypes, os, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.syscall(435, None, 0), ctypes.get_errno())\n"  # clone3(NULL, 0)
        "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
        "print(os.waitpid(os.posix_spawn('/bin/true', ['true'], {}), 0)[1])\n"
    )
    done = runc.run(runc.spec(debian_rootfs, "/usr/bin/python3", "-c", script))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["-1", "38", "thread", "0"]
