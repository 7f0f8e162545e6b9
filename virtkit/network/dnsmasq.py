"""One dnsmasq per virtkit network: DHCP with fixed addresses only, and DNS for the network's names.

virtkit allocates every address itself; dnsmasq only hands them out (to the MACs it was told about,
nobody else) and answers names: each instance as NAME and NAME.DOMAIN, the host as ``gateway``.
It serves the network's bridge alone, so several networks, a system dnsmasq and systemd-resolved
share one host without colliding. A nat network forwards other names to the host's resolvers; an
isolated one answers NXDOMAIN for them at once.

No Python process stays behind: dnsmasq daemonizes and writes a pidfile in the network's directory
(ROOT/networks/NAME/), which also holds its config, hosts files, lease file and log. Any later
virtkit process finds it again through that pidfile, trusting the PID only while /proc/PID/cmdline
still names our config file.

Hosts added to a running network take a SIGHUP (same process). A host removed, re-addressed or
renamed while it holds a lease takes a restart: dnsmasq reads its lease file only at start, and a
lease it keeps would go on answering the old name and refuse the address to its next owner.

Privileges: dnsmasq binds as root, then becomes Debian's ``dnsmasq`` system user (else ``nobody``)
in that user's group, keeping only CAP_NET_ADMIN and CAP_NET_RAW (and CAP_NET_BIND_SERVICE while
an IPv6 address of the bridge is still tentative). It writes only through files it opened as root
(lease file, log, pidfile), so nothing in the directory is writable by that user; it can only read
the two hosts files (group-readable), which it re-reads on SIGHUP. A directory that user cannot
reach makes dnsmasq stay root, logged as a warning.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from virtkit import procs
from virtkit.errors import HostCapabilityError, ToolError
from virtkit.network.dnsconfig import (
    CONF,
    DHCP_HOSTS,
    DIGITS_RE,
    DNS_HOSTS,
    LEASES,
    LOGFILE,
    PIDFILE,
    Config,
    DaemonUser,
    Host,
    Lease,
    Rendered,
    parse_leases,
    render,
    validate,
)

__all__ = ["Config", "DaemonUser", "Dnsmasq", "Host", "Lease", "Rendered", "parse_leases", "render"]

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # dnsmasq's parent exits once its daemon is serving (or has failed)
PIDFILE_TIMEOUT = 2.0
STOP_TIMEOUT = 5.0
KILL_TIMEOUT = 2.0
LOG_ROTATE_SIZE = 1 << 20
USERS = ("dnsmasq", "nobody")  # Debian's dnsmasq-base makes the first; dnsmasq's own default is the second
# LC_ALL=C: its error messages are quoted to users and matched below, so they must not be translated.
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

BRIDGE_STATE = "dnsmasq.bridge"  # "BRIDGE IFINDEX" it was started on: a recreated bridge needs a restart


def daemon_user() -> DaemonUser | None:
    """The first of USERS this host has, in its primary group; None when none exists."""
    for name in USERS:
        try:
            entry = pwd.getpwnam(name)
            group = grp.getgrgid(entry.pw_gid).gr_name
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return DaemonUser(name, group, entry.pw_uid, entry.pw_gid)
    return None


def _unreachable(directory: Path, who: DaemonUser) -> Path | None:
    """The first directory above `directory` that `who` cannot enter (or that is missing). Only its
    uid and gid count: dnsmasq drops every supplementary group."""
    for parent in reversed(directory.parents):
        try:
            info = parent.stat()
        except OSError:
            return parent
        if info.st_uid == who.uid:
            bit = stat.S_IXUSR
        elif info.st_gid == who.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return parent
    return None


def _wanted(lease: Lease, hosts: list[tuple[str, str, str]]) -> bool:
    """Whether `lease` is one the hosts (mac, ip, name) still account for."""
    return any((lease.mac, lease.ip) == (mac, ip) and lease.hostname in (None, name)
               for mac, ip, name in hosts)


def _ifindex(name: str) -> int | None:
    """The interface's index in the calling thread's network namespace, None when it does not exist."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


class Dnsmasq:
    """The dnsmasq of one network, kept in `directory` (ROOT/networks/NAME/, this module's own:
    it is made mode 0750, group of dnsmasq's user). Needs root, and the network namespace in
    which the bridge lives (the calling thread's)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(os.path.abspath(directory))

    @property
    def config_file(self) -> Path:
        return self.directory / CONF

    @property
    def log_file(self) -> Path:
        return self.directory / LOGFILE

    @property
    def pid_file(self) -> Path:
        return self.directory / PIDFILE

    @property
    def leases_file(self) -> Path:
        return self.directory / LEASES

    def start(self, config: Config) -> None:
        """Make dnsmasq run with `config`: a no-op when it already does, a SIGHUP when only the hosts
        changed, a restart when anything else did, when the bridge was made anew, or when a lease
        names a host no longer there as it was. ToolError, with dnsmasq's own words, when it cannot
        start (HostCapabilityError when dnsmasq is not installed, SpecError for a bad config)."""
        self._apply(config, reread=False)

    def reload(self, config: Config) -> None:
        """As `start`, but always has a running dnsmasq re-read its hosts files (SIGHUP)."""
        self._apply(config, reread=True)

    def stop(self) -> None:
        """End dnsmasq (SIGTERM, then SIGKILL after STOP_TIMEOUT) and remove its pidfile; idempotent."""
        pid = self.pid()
        if pid is not None:
            self._terminate(pid)
            log.info("dnsmasq in %s (pid %d) stopped", self.directory, pid)
        for name in (PIDFILE, BRIDGE_STATE):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()

    def pid(self) -> int | None:
        """The PID of the dnsmasq running with this directory's config, None when there is none.

        The pidfile is believed only while /proc/PID/cmdline names our config file; should the pidfile
        be lost or stale, /proc is searched for such a process, so none is ever left unmanaged."""
        try:
            text = self.pid_file.read_text(errors="replace").strip()
        except OSError:
            text = ""
        if DIGITS_RE.fullmatch(text) and self._ours(int(text)):
            return int(text)
        with os.scandir("/proc") as entries:
            for entry in entries:
                if entry.name.isdigit() and self._ours(int(entry.name)):
                    return int(entry.name)
        return None

    def leases(self) -> list[Lease]:
        """The leases dnsmasq has handed out, as its lease file says (empty before its first start)."""
        try:
            return parse_leases(self.leases_file.read_text(errors="replace"))
        except FileNotFoundError:
            return []

    # --- internals ---

    def _apply(self, config: Config, *, reread: bool) -> None:
        user, files, hosts = self._prepare(config)
        pid = self.pid()
        # A lease outlives its dhcp-host line, SIGHUP or not: dnsmasq would keep answering its name
        # and refuse its address to the next instance given it ("is leased to"). Leases are only
        # read at start, so an instance gone from the network costs a restart with its lease pruned.
        if pid is not None and self._same(config, files) and not self._stale_leases(hosts):
            if not (self._write_hosts(files, user) or reread):
                return
            if self._signal(pid, signal.SIGHUP):
                log.info("dnsmasq of network %s (pid %d) re-reads its hosts", config.network, pid)
                return
            pid = None  # it ended meanwhile
        if pid is not None:
            log.info("dnsmasq of network %s (pid %d) restarts: its config, bridge or hosts changed",
                     config.network, pid)
            self.stop()
        self._launch(config, user, files, hosts)

    def _stale_leases(self, hosts: list[tuple[str, str, str]]) -> bool:
        return any(not _wanted(lease, hosts) for lease in self.leases())

    def _prune_leases(self, hosts: list[tuple[str, str, str]]) -> None:
        try:
            text = self.leases_file.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        kept = []
        for line in text.splitlines():
            lease = parse_leases(line)
            if line.startswith("duid ") or (lease and _wanted(lease[0], hosts)):
                kept.append(line)
        self._write(LEASES, "".join(line + "\n" for line in kept), 0o640)  # opened by dnsmasq as root

    def _prepare(self, config: Config) -> tuple[DaemonUser | None, Rendered, list[tuple[str, str, str]]]:
        """Validate `config`, make the directory, choose whom dnsmasq becomes, render the files."""
        hosts = validate(config)
        self.directory.mkdir(parents=True, exist_ok=True)
        user = daemon_user()
        if user is not None:
            blocked = _unreachable(self.directory, user)
            if blocked is not None:
                log.warning("dnsmasq of network %s runs as root: its user %s cannot enter %s "
                            "(make that directory o+x to let it drop privileges)",
                            config.network, user.user, blocked)
                user = None
        elif os.geteuid() == 0:
            log.warning("dnsmasq of network %s runs as root: this host has none of the users %s",
                        config.network, ", ".join(USERS))
        if os.geteuid() == 0:
            os.chown(self.directory, 0, user.gid if user else 0)
        self.directory.chmod(0o750)
        return user, render(config, self.directory, user), hosts

    def _ours(self, pid: int) -> bool:
        """Whether `pid` is a dnsmasq started with our config file (a zombie's cmdline is empty: not ours)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        wanted = f"--conf-file={self.config_file}".encode()
        return os.path.basename(argv[0]) == b"dnsmasq" and wanted in argv[1:]

    def _same(self, config: Config, files: Rendered) -> bool:
        """Whether the running dnsmasq was started from `files`' config on the bridge as it is now."""
        try:
            running = self.config_file.read_text()
            bridge = (self.directory / BRIDGE_STATE).read_text().split()
        except OSError:
            return False
        index = _ifindex(config.bridge)
        return running == files.conf and bridge == [config.bridge, str(index)]

    def _write(self, name: str, text: str, mode: int, gid: int = 0) -> bool:
        """Replace the file `name` atomically (dnsmasq never reads half of it); whether it changed."""
        path = self.directory / name
        with contextlib.suppress(OSError):
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == mode and info.st_gid == gid \
                    and path.read_text() == text:
                return False
        temporary = self.directory / f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, 0, gid)
            os.fchmod(fd, mode)
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(temporary, path)
        return True

    def _write_hosts(self, files: Rendered, user: DaemonUser | None) -> bool:
        # dnsmasq re-reads these after dropping privileges: readable by its group, writable by root only.
        gid = user.gid if user else 0
        changed = self._write(DHCP_HOSTS, files.dhcp_hosts, 0o640, gid)
        return self._write(DNS_HOSTS, files.dns_hosts, 0o640, gid) or changed

    def _launch(self, config: Config, user: DaemonUser | None, files: Rendered,
                hosts: list[tuple[str, str, str]]) -> None:
        binary = shutil.which("dnsmasq", path=ENV["PATH"])
        if binary is None:
            raise HostCapabilityError("dnsmasq is not installed: virtkit networks need it for DHCP and DNS",
                                      hint="install it: apt-get install dnsmasq-base")
        self._rotate_log()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()  # not ours (pid() said so): dnsmasq must write a fresh one
        self._write(CONF, files.conf, 0o600)  # read once, as root, before dnsmasq drops privileges
        self._write_hosts(files, user)
        self._prune_leases(hosts)
        argv = [binary, f"--conf-file={self.config_file}"]  # and nothing else: not /etc/dnsmasq.conf
        offset = self._log_size()
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    errors="replace", env=ENV, timeout=START_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            self.stop()
            raise ToolError(f"dnsmasq of network {config.network} did not start within {START_TIMEOUT:g} s",
                            argv=argv) from None
        except OSError as error:
            raise ToolError(f"dnsmasq of network {config.network} could not be run: {error}",
                            argv=argv) from None
        if result.returncode != 0:
            raise self._failure(config, argv, result, offset)
        pid = self._await_pidfile(config, argv)
        self._settle(pid, config)

    def _await_pidfile(self, config: Config, argv: list[str]) -> int:
        # dnsmasq writes its pidfile before its first process exits; the wait only covers slow disks.
        deadline = time.monotonic() + PIDFILE_TIMEOUT
        while True:
            pid = self.pid()
            if pid is not None:
                return pid
            if time.monotonic() > deadline:
                raise ToolError(f"dnsmasq of network {config.network} started but is not running: "
                                f"{self._log_tail(0) or 'its log is empty'}", argv=argv)
            time.sleep(0.02)

    def _settle(self, pid: int, config: Config) -> None:
        # dnsmasq gives its pidfile and log to its user so that it could unlink or reopen them; it needs
        # neither (they are ours to remove, and its open descriptor keeps logging), so take them back.
        if os.geteuid() == 0:
            for path in (self.pid_file, self.log_file):
                with contextlib.suppress(FileNotFoundError):
                    os.chown(path, 0, 0)
                    path.chmod(0o644 if path == self.pid_file else 0o640)
        index = _ifindex(config.bridge)
        self._write(BRIDGE_STATE, f"{config.bridge} {index}\n", 0o644)
        log.info("dnsmasq of network %s started (pid %d) on %s, %s", config.network, pid, config.bridge,
                 config.gateway)

    def _failure(self, config: Config, argv: list[str], result: subprocess.CompletedProcess[str],
                 offset: int) -> ToolError:
        said = result.stderr.strip() or self._log_tail(offset) or f"exit status {result.returncode}"
        said = said.removeprefix("dnsmasq: ")
        message = f"dnsmasq of network {config.network} did not start: {said}"
        hint = None
        if _ifindex(config.bridge) is None:
            message = (f"dnsmasq of network {config.network} did not start: bridge {config.bridge} "
                       f"does not exist ({said})")
            hint = "create the network's bridge first (virtkit network reconcile makes it again)"
        elif "Address already in use" in said:
            hint = f"something else serves DNS or DHCP on {config.gateway}; stop it or use another subnet"
        elif "Cannot assign requested address" in said:
            hint = f"give the bridge {config.bridge} the address {config.gateway} first"
        return ToolError(message, argv=argv, returncode=result.returncode, stderr=result.stderr[-4000:],
                         hint=hint)

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _log_tail(self, offset: int) -> str:
        """What dnsmasq logged since `offset`: its last lines, without syslog-style prefixes."""
        try:
            with self.log_file.open("rb") as stream:
                stream.seek(offset)
                text = stream.read(64 * 1024).decode(errors="replace")
        except OSError:
            return ""
        lines = [line.split("]: ", 1)[-1] for line in text.splitlines() if line.strip()]
        return "; ".join(lines[-3:])

    def _rotate_log(self) -> None:
        if self._log_size() > LOG_ROTATE_SIZE:
            os.replace(self.log_file, self.log_file.with_name(LOGFILE + ".1"))

    def _signal(self, pid: int, signum: int) -> bool:
        """Send `signum` to `pid` if it is still our dnsmasq; whether it was."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        try:
            # Checked after opening the pidfd: from here on the PID cannot name another process.
            if not self._ours(pid):
                return False
            signal.pidfd_send_signal(pidfd, signum)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(pidfd)

    def _terminate(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            if not self._ours(pid):
                return
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if procs.exited(pidfd, STOP_TIMEOUT):
                return
            log.warning("dnsmasq in %s (pid %d) ignored SIGTERM for %g s: killing it", self.directory, pid,
                        STOP_TIMEOUT)
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            if not procs.exited(pidfd, KILL_TIMEOUT):
                raise ToolError(f"dnsmasq in {self.directory} (pid {pid}) did not exit, even on SIGKILL")
        except ProcessLookupError:
            return
        finally:
            os.close(pidfd)
