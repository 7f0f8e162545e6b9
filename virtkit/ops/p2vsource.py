"""The machine `virtkit p2v --from ssh://USER@HOST[:PORT]` copies, reached with the host's ssh client.

Nothing the user typed or the remote said ever reaches a shell unchecked: the URL is parsed by
strict rules (`parse_url`: an ssh:// scheme, a user and a host name, IPv4 or [IPv6] address that
cannot be read as an option, a port, nothing else), ssh is run from an argv list with `--` before
the host, and every remote command is one argv joined with shell quoting (ssh hands the remote
shell a single string). What the remote answers (its mount table, `lsblk -J`, `df`) is parsed as
untrusted data, bounded in size; device names are checked before `/dev/NAME` is read.

Host keys are checked as ssh users expect: a key ssh does not know is refused unless
`--accept-host-key` says to trust it on first use (StrictHostKeyChecking=accept-new, which still
refuses a key that changed); `--known-hosts FILE` keeps the keys in FILE instead of
~/.ssh/known_hosts. ssh runs in batch mode (never a password prompt), with a connect timeout and
keepalives, so a dead host or link ends the copy instead of hanging it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
import secrets
import shlex
import subprocess
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from virtkit.errors import AuthError, HostCapabilityError, RejectedError, RemoteError, SpecError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10  # seconds for the TCP connection and the SSH handshake
PROBE_TIMEOUT = 120.0  # seconds for the probe (df of every local filesystem)
STREAM_END_TIMEOUT = 60.0  # seconds a remote command may take to exit once its output ended
MAX_PROBE = 4 * 1024 * 1024  # bytes of probe output read at most
DEFAULT_PORT = 22
DEFAULT_USER = "root"
URL_FORM = "ssh://[USER@]HOST[:PORT], e.g. ssh://root@server.example.com:2222"

# Filesystems that hold the server's own data (copied by --filesystem, their disks by --disks auto);
# every other type (proc, sysfs, tmpfs, cgroup, nfs, cifs, fuse.*, overlay, squashfs, ...) is not.
LOCAL_TYPES = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "f2fs", "jfs", "reiserfs", "bcachefs", "exfat", "ntfs3"}
)
# Never copied, whatever is mounted there: the kernel's views, and what does not outlive a boot.
SKIPPED_DIRS = ("proc", "sys", "dev", "run", "tmp")
DISK_TYPES = ("disk", "loop")  # lsblk TYPEs p2v copies whole (a loop device: a disk image)

_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}", re.ASCII)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?", re.ASCII)
_DEVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", re.ASCII)
_SAFE_PATH = re.compile(r"[^\s\"'\\]+")


@dataclass(frozen=True)
class Remote:
    """Where to connect: a checked user, host (an IPv6 address without its brackets) and port."""

    user: str
    host: str
    port: int = DEFAULT_PORT

    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + (f":{self.port}" if self.port != DEFAULT_PORT else "")


def _bad_url(text: str, why: str) -> SpecError:
    shown = text if len(text) <= 80 and text.isprintable() else repr(text[:80])
    return SpecError(f"invalid --from {shown!r}: {why}", hint=f"give {URL_FORM}")


def parse_url(text: str) -> Remote:
    """The remote an `ssh://` URL names, or SpecError saying what is wrong with it."""
    if not text.isprintable() or any(c.isspace() for c in text) or len(text) > 300:
        raise _bad_url(text, "it holds spaces or control characters")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise _bad_url(text, "it is not a URL (no scheme://)")
    if scheme.lower() != "ssh":
        raise _bad_url(text, f"p2v copies servers over ssh, not {scheme!r}")
    rest = rest.removesuffix("/")
    if any(c in rest for c in "/?#"):
        raise _bad_url(text, "it has a path, query or fragment: only USER@HOST:PORT are read")
    user, at, hostport = rest.rpartition("@")
    if not at:
        user = DEFAULT_USER
    elif ":" in user:
        raise _bad_url(text, "passwords in URLs are not accepted")
    elif not _USER.fullmatch(user):
        raise _bad_url(text, f"{user!r} is not a user name")
    host, port = _host_port(text, hostport)
    return Remote(user, host, port)


def _host_port(text: str, hostport: str) -> tuple[str, int]:
    port_text = ""
    if hostport.startswith("["):
        host, close, after = hostport[1:].partition("]")
        if not close or (after and not after.startswith(":")):
            raise _bad_url(text, "an IPv6 address is written [ADDRESS] or [ADDRESS]:PORT")
        port_text = after[1:] if after else ""
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise _bad_url(text, f"{host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = hostport.partition(":")
        if colon and not port_text:
            raise _bad_url(text, "no port after ':'")
        if not host:
            raise _bad_url(text, "no host")
        if not _HOSTNAME.fullmatch(host) or len(host) > 253:
            raise _bad_url(text, f"{host!r} is not a host name or address")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _bad_url(text, f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return host, port


@dataclass(frozen=True)
class SshOptions:
    identity: Path | None = None
    known_hosts: Path | None = None
    accept_host_key: bool = False
    connect_timeout: int = CONNECT_TIMEOUT


def _option_path(path: Path, what: str) -> str:
    text = str(path.absolute())
    if not _SAFE_PATH.fullmatch(text):
        raise SpecError(f"{what} {text!r}: the path may not hold spaces, quotes or backslashes")
    return text


class Ssh:
    """Commands run on one remote machine."""

    def __init__(self, remote: Remote, options: SshOptions) -> None:
        self.remote = remote
        self.options = options
        if options.identity is not None and not options.identity.is_file():
            raise SpecError(f"--identity {options.identity}: no such key file")
        self._base = self._base_argv()

    def _base_argv(self) -> list[str]:
        options = self.options
        strict = "accept-new" if options.accept_host_key else "yes"
        argv = ["ssh", "-T", "-x", "-a", "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={strict}",
                "-o", f"ConnectTimeout={options.connect_timeout}", "-o", "ServerAliveInterval=10",
                "-o", "ServerAliveCountMax=6", "-o", "LogLevel=ERROR", "-o", "ClearAllForwardings=yes",
                "-p", str(self.remote.port), "-l", self.remote.user]  # fmt: skip
        if options.identity is not None:
            argv += ["-i", _option_path(options.identity, "--identity"), "-o", "IdentitiesOnly=yes"]
        if options.known_hosts is not None:
            argv += ["-o", f"UserKnownHostsFile={_option_path(options.known_hosts, '--known-hosts')}"]
        return argv

    def argv(self, command: Sequence[str]) -> list[str]:
        """The local argv running `command` (an argv, quoted for the remote shell) on the remote."""
        return [*self._base, "--", self.remote.host, shlex.join(["env", "LC_ALL=C", *command])]

    def script_argv(self, script: str) -> list[str]:
        """The local argv running `script` (virtkit's own constant text) with the remote's sh."""
        return [*self._base, "--", self.remote.host, shlex.join(["env", "LC_ALL=C", "sh", "-c", script])]

    def run(self, command: Sequence[str], *, timeout: float) -> str:
        return self._run(self.argv(command), timeout)

    def _run(self, argv: list[str], timeout: float) -> str:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                  check=False)  # fmt: skip
        except FileNotFoundError:
            raise HostCapabilityError(
                "ssh is not installed on this host", hint="apt-get install openssh-client"
            ) from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.remote.label()} did not answer within {timeout:g} s") from None
        stderr = done.stderr.decode(errors="replace")
        if done.returncode == 255:
            raise self.failure(stderr)
        if done.returncode != 0:
            raise RemoteError(f"a command on {self.remote.label()} failed (exit status {done.returncode}): "
                              f"{_last_line(stderr)}")  # fmt: skip
        if len(done.stdout) > MAX_PROBE:
            raise RejectedError(f"{self.remote.label()} answered more than {MAX_PROBE} bytes to a probe")
        return done.stdout.decode(errors="replace")

    @contextmanager
    def stream(self, command: Sequence[str], *, ok: Collection[int] = (0,)) -> Iterator[int]:
        """Run `command` on the remote; yield the fd of its output, which the caller reads to the
        end. Its exit status must be in `ok`. ssh's own failures (a link that breaks mid-stream
        too) raise what `failure` says, whatever the reader made of the cut-off stream."""
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.Popen(self.argv(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=errors)  # fmt: skip
            except FileNotFoundError:
                raise HostCapabilityError(
                    "ssh is not installed on this host", hint="apt-get install openssh-client"
                ) from None
            assert proc.stdout is not None
            try:
                yield proc.stdout.fileno()
                code = proc.wait(timeout=STREAM_END_TIMEOUT)
            except BaseException:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.5)  # did ssh end first (a broken link)?
                if proc.returncode == 255:
                    raise self.failure(_read_all(errors)) from None
                raise
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
            said = _read_all(errors)
            if code == 255:
                raise self.failure(said)
            if code not in ok:
                raise RemoteError(f"{command[0]} on {self.remote.label()} failed (exit status {code}): "
                                  f"{_last_line(said)}")  # fmt: skip
            if said.strip():
                log.info("%s on %s said: %s", command[0], self.remote.label(), said.strip()[-2000:])

    def failure(self, stderr: str) -> RemoteError:
        """What ssh's exit status 255 (its own failure, not the command's) means, from its stderr."""
        label, said = self.remote.label(), _last_line(stderr)
        host = self.remote.host
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "host key for" in stderr.lower():
            return RemoteError(
                f"the host key of {label} is not the one known for it: refusing to connect",
                hint=f"if the server's key really changed, remove the old one: ssh-keygen -R {host}",
            )
        if "Host key verification failed" in stderr or ("No " in said and "host key is known" in said):
            return RemoteError(
                f"the host key of {label} is not known",
                hint=f"check its fingerprint (ssh-keyscan -p {self.remote.port} {host} | ssh-keygen -lf -), "
                "then add --accept-host-key to trust it on first use",
            )
        if "Permission denied" in stderr or "Too many authentication failures" in stderr:
            return AuthError(
                f"{label} refused the login: {said}",
                hint="give the key its authorized_keys holds with --identity KEYFILE (no password prompts)",
            )
        unreachable = ("Connection refused", "No route to host", "timed out", "Could not resolve",
                       "Network is unreachable", "Name or service not known", "Connection closed",
                       "Connection reset", "Temporary failure in name resolution", "not known")  # fmt: skip
        if any(word in stderr for word in unreachable):
            return RemoteError(
                f"cannot reach {label}: {said}", hint="check the host, its port and that sshd runs"
            )
        return RemoteError(f"ssh to {label} failed: {said or 'exit status 255'}")

    def probe(self) -> Probe:
        """What the remote machine is: its kernel, its user, mounts, disks and their use (one ssh)."""
        mark = f"@@virtkit-{secrets.token_hex(8)}@@"
        parts = ("uname -s", "id -u", "hostname", "cat /proc/self/mounts",
                 "tar --version 2>/dev/null | head -n 1",
                 "lsblk -J -b -o NAME,TYPE,SIZE,MOUNTPOINT,RO 2>/dev/null",
                 "df -l -B1 --output=used,size,target 2>/dev/null")  # fmt: skip
        script = f"; echo {mark}; ".join(parts)
        sections = self._run(self.script_argv(script), PROBE_TIMEOUT).split(f"{mark}\n")
        if len(sections) != len(parts):
            raise RejectedError(f"{self.remote.label()} answered the probe with nonsense",
                                hint="is it a Linux machine with a POSIX shell?")  # fmt: skip
        system, uid, hostname, mounts, tar, lsblk, df = (s.strip("\n") for s in sections)
        return Probe(system.strip(), uid.strip(), hostname.strip(), parse_mounts(mounts), tar.strip(),
                     parse_lsblk(lsblk), parse_df(df))  # fmt: skip


def _read_all(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read(1 << 20).decode(errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# --- what the remote says ----------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str

    @property
    def local(self) -> bool:
        return self.fstype in LOCAL_TYPES and self.source.startswith("/dev/")


@dataclass(frozen=True)
class BlockDevice:
    name: str
    type: str
    size: int
    mountpoints: tuple[str, ...] = ()  # of it and of everything on it (partitions, LVM, ...)
    readonly: bool = False


@dataclass(frozen=True)
class Probe:
    system: str
    uid: str
    hostname: str
    mounts: tuple[Mount, ...]
    tar: str
    disks: tuple[BlockDevice, ...]
    used: dict[str, tuple[int, int]] = field(default_factory=dict)  # target -> (used, size) bytes


def _unescape(field_text: str) -> str:
    """A /proc/mounts field: spaces, tabs, newlines and backslashes are written as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def parse_mounts(text: str) -> tuple[Mount, ...]:
    mounts = []
    for line in text.splitlines()[:10000]:
        fields = line.split()
        if len(fields) >= 3:
            mounts.append(Mount(_unescape(fields[0]), _unescape(fields[1]), fields[2]))
    return tuple(mounts)


def parse_df(text: str) -> dict[str, tuple[int, int]]:
    used: dict[str, tuple[int, int]] = {}
    for line in text.splitlines()[1:10001]:
        fields = line.strip().split(maxsplit=2)
        if len(fields) == 3 and fields[0].isdigit() and fields[1].isdigit():
            used[fields[2]] = (int(fields[0]), int(fields[1]))
    return used


def parse_lsblk(text: str) -> tuple[BlockDevice, ...]:
    """The top-level block devices of `lsblk -J`, each with the mount points found anywhere under it."""
    try:
        document = json.loads(text) if text.strip() else {}
    except ValueError:
        return ()
    devices = document.get("blockdevices") if isinstance(document, dict) else None
    found = []
    for device in devices if isinstance(devices, list) else []:
        if not isinstance(device, dict):
            continue
        name, size = device.get("name"), device.get("size")
        if not isinstance(name, str) or not _DEVICE.fullmatch(name):
            continue
        size_value = int(size) if isinstance(size, int | str) and str(size).isdigit() else 0
        found.append(
            BlockDevice(
                name,
                str(device.get("type", "")),
                size_value,
                tuple(_mountpoints(device, 0)),
                device.get("ro") in (True, "1", 1),
            )
        )
    return tuple(found)


def _mountpoints(device: dict[str, Any], depth: int) -> list[str]:
    points = [device["mountpoint"]] if isinstance(device.get("mountpoint"), str) else []
    children = device.get("children")
    if depth < 8 and isinstance(children, list):
        for child in children:
            if isinstance(child, dict):
                points += _mountpoints(child, depth + 1)
    return points


def check_server(remote: Remote, probe: Probe) -> None:
    """A Linux machine where we are root, or RejectedError / AuthError."""
    if probe.system != "Linux":
        raise RejectedError(
            f"{remote.label()} is not a Linux machine (uname -s says {probe.system[:40]!r})",
            hint="p2v copies Linux servers",
        )
    if probe.uid != "0":
        raise AuthError(
            f"{remote.label()}: user {remote.user} is not root there (uid {probe.uid[:12]})",
            hint="p2v reads every file and disk of the server: log in as root (ssh://root@HOST)",
        )


def copied_mounts(mounts: Sequence[Mount]) -> list[Mount]:
    """The local filesystems a --filesystem copy takes, root first: each mounted place once, none
    under a skipped directory (/proc, /sys, /dev, /run, /tmp) or under a network mount."""
    last: dict[str, Mount] = {}
    for mount in mounts:  # a place mounted over twice shows what was mounted last
        if mount.target.startswith("/") and "\0" not in mount.target:
            last[mount.target] = mount
    chosen: list[Mount] = []
    sources: set[str] = set()
    for target in sorted(last, key=lambda t: (t.count("/") if t != "/" else 0, t)):
        mount = last[target]
        top = target.strip("/").split("/")[0]
        if not mount.local or top in SKIPPED_DIRS or mount.source in sources:
            continue
        if target != "/" and not _reached(target, last):
            continue
        sources.add(mount.source)  # a filesystem mounted twice (a bind mount) is copied once
        chosen.append(mount)
    if not chosen or chosen[0].target != "/":
        raise RejectedError("the server's root filesystem is not one p2v can copy "
                            f"({', '.join(sorted(LOCAL_TYPES))})")  # fmt: skip
    return chosen


def _reached(target: str, mounts: dict[str, Mount]) -> bool:
    """Whether every mount above `target` is local (an ext4 under an NFS mount stays out)."""
    parts = target.strip("/").split("/")
    for end in range(1, len(parts)):
        above = "/" + "/".join(parts[:end])
        if above in mounts and not mounts[above].local:
            return False
    return True


def tar_command(mounts: Sequence[Mount], tar_version: str) -> list[str]:
    """The remote command streaming the copied filesystems' files as a POSIX tar archive."""
    if "GNU tar" not in tar_version:
        raise RejectedError(
            f"the server's tar is not GNU tar, which --filesystem needs ({tar_version[:60] or 'no tar'})",
            hint="install GNU tar there, or copy its disks (without --filesystem)",
        )
    argv = ["tar", "--create", "--file=-", "--format=posix", "--numeric-owner", "--one-file-system",
            "--xattrs", "--xattrs-include=security.capability", "--xattrs-include=user.*",
            "--warning=no-file-changed", "--warning=no-file-removed", "--warning=no-file-ignored",
            "--directory=/", "--anchored", "--wildcards"]  # fmt: skip
    argv += [f"--exclude=./{name}/*" for name in SKIPPED_DIRS]
    argv.append("--")
    argv += ["." if m.target == "/" else "." + m.target for m in mounts]
    return argv


def check_device(name: str) -> str:
    """A device name from the user or lsblk, safe to make /dev/NAME of."""
    if not _DEVICE.fullmatch(name) or name in (".", ".."):
        raise SpecError(f"invalid disk name {name!r}", hint="give names as lsblk shows them: sda,sdb")
    return name


def chosen_disks(probe: Probe, asked: str, mounts: Sequence[Mount]) -> list[BlockDevice]:
    """The disks to copy: `auto` (those holding the server's local filesystems, the root's first)
    or the names given (sda,sdb), each a disk the server has."""
    by_name = {d.name: d for d in probe.disks}
    if asked != "auto":
        picked = []
        for name in (n.strip() for n in asked.split(",")):
            check_device(name)
            if name not in by_name:
                raise SpecError(
                    f"the server has no disk {name!r}",
                    hint=f"it has: {', '.join(sorted(by_name)) or 'none lsblk shows'}",
                )
            if by_name[name] not in picked:
                picked.append(by_name[name])
        return picked
    wanted = [m.target for m in mounts]
    holding = [d for d in probe.disks if d.type in DISK_TYPES and set(d.mountpoints) & set(wanted)]
    if not holding:
        raise RejectedError(
            "lsblk on the server shows no disk holding its filesystems",
            hint="name them with --disks sda,sdb, or copy its files with --filesystem",
        )
    return sorted(holding, key=lambda d: "/" not in d.mountpoints)


def used_bytes(probe: Probe, mounts: Sequence[Mount]) -> int:
    """What the copied filesystems hold, as df says (0 when df said nothing of one)."""
    return sum(probe.used.get(m.target, (0, 0))[0] for m in mounts)


def dd_command(device: str) -> list[str]:
    return ["dd", f"if=/dev/{check_device(device)}", "bs=4M", "status=none"]
