"""Which OCI runtime runs containers here, decided by really running one; the verdict kept on disk.

Being installed proves little: crun 1.8 refuses hybrid cgroup hosts ("cgroups in hybrid mode not
supported") where runc 1.1 works. So each installed candidate, crun first (lighter, faster), then
runc, runs a throwaway container: a rootfs holding only the host's static busybox, a config.json
made by the driver's own `build_config` (its namespaces, seccomp, masked paths, a cgroupsPath under
/virtkit and a pids limit), `RUNTIME --root TMP run` of `busybox echo MARKER`, bounded by a
timeout. The first that exits 0 and prints the marker wins; every trial is cleaned up (runtime
delete, its cgroup in every hierarchy, the temporary directory). Measured here: crun's refusal
takes ~30 ms, runc's test container ~0.2 s; a cache hit ~3 ms (no version command is run again
for a binary whose inode, size and mtime are those of the cached key).

The verdict is cached in ROOT/cache/oci-runtime.json, keyed by what it depends on: each
candidate's path, inode, size, mtime and version line, the kernel release and the cgroup layout;
any change reads as a miss and probes again. Only a verdict that chose a runtime and had no
timed-out trial is written (atomically, so concurrent virtkit processes never see half a file),
and only into a state root that exists (`host check` must not create one).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import resource
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtkit.drivers.cgroup import PARENT
from virtkit.drivers.oci.bundle import build_config
from virtkit.drivers.oci.runtime import CACHE_FILE
from virtkit.drivers.oci.spec import ContainerSpec
from virtkit.errors import HostCapabilityError, VirtkitError
from virtkit.host.cgroups import probe_cgroups, read_mounts
from virtkit.host.checks import JsonValue
from virtkit.host.ociruntime import OciRuntimeVerdict, RuntimeTrial
from virtkit.host.tools import parse_version
from virtkit.images import elf
from virtkit.store import atomic_write

log = logging.getLogger(__name__)

CANDIDATES = ("crun", "runc")  # in order of preference
HOST_BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
TRIAL_TIMEOUT = 10.0
VERSION_TIMEOUT = 5.0
CLEANUP_TIMEOUT = 10.0
CGROUP_REMOVE_TIMEOUT = 2.0
MARKER = "VIRTKIT-OCI-PROBE"
PIDS = 16
_FORMAT = 1

Which = Callable[[str], str | None]


@dataclass(frozen=True)
class Candidate:
    """An installed runtime and what identifies this very binary (a package upgrade changes it)."""

    name: str
    path: str
    version_line: str  # the first line of `RUNTIME --version`, e.g. "crun version 1.8.1"
    stat: tuple[int, int, int]  # inode, size, mtime in ns

    @property
    def version(self) -> str | None:
        return parse_version(self.version_line)

    def identity(self) -> dict[str, JsonValue]:
        inode, size, mtime = self.stat
        return {"name": self.name, "path": self.path, "version": self.version_line,
                "inode": inode, "size": size, "mtime_ns": mtime}  # fmt: skip


def _version_line(path: str) -> str:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return (done.stdout.strip().splitlines() or ["unknown"])[0]


Known = Mapping[tuple[str, int, int, int], str]  # (path, inode, size, mtime) -> version line


def find_candidates(
    which: Which = shutil.which, names: Sequence[str] = CANDIDATES, known: Known | None = None
) -> list[Candidate]:
    """The installed candidates, in order of preference. A binary `known` by its path, inode, size
    and mtime keeps its known version line; the others' versions are read, concurrently."""
    known = known or {}
    found: list[tuple[str, str, os.stat_result]] = []
    for name in names:
        path = which(name)
        if path is None:
            continue
        try:
            found.append((name, path, os.stat(path)))
        except OSError as exc:
            log.info("ignoring %s at %s: %s", name, path, exc)

    def version(item: tuple[str, str, os.stat_result]) -> str:
        _name, path, st = item
        return known.get((path, st.st_ino, st.st_size, st.st_mtime_ns)) or _version_line(path)

    with ThreadPoolExecutor(max_workers=max(1, len(found))) as pool:
        lines = list(pool.map(version, found))
    return [Candidate(name, path, line, (st.st_ino, st.st_size, st.st_mtime_ns))
            for (name, path, st), line in zip(found, lines, strict=True)]  # fmt: skip


def known_versions(document: dict[str, Any] | None) -> dict[tuple[str, int, int, int], str]:
    """The version lines a cache document's key holds, by binary identity: no need to run them again."""
    known: dict[tuple[str, int, int, int], str] = {}
    runtimes = ((document or {}).get("key") or {}).get("runtimes")
    for item in runtimes if isinstance(runtimes, list) else []:
        if not isinstance(item, dict):
            continue
        path, line = item.get("path"), item.get("version")
        inode, size, mtime = item.get("inode"), item.get("size"), item.get("mtime_ns")
        if isinstance(path, str) and isinstance(line, str) and isinstance(inode, int) \
                and isinstance(size, int) and isinstance(mtime, int):  # fmt: skip
            known[(path, inode, size, mtime)] = line
    return known


def cache_key(candidates: Sequence[Candidate], *, kernel: str | None = None,
              cgroups: dict[str, JsonValue] | None = None) -> dict[str, JsonValue]:  # fmt: skip
    """What a verdict holds for: these runtime binaries, this kernel, this cgroup layout."""
    return {
        "runtimes": [candidate.identity() for candidate in candidates],
        "kernel": kernel if kernel is not None else platform.release(),
        "cgroups": cgroups if cgroups is not None else cgroup_layout(),
    }


def cgroup_layout(sysroot: Path = Path("/")) -> dict[str, JsonValue]:
    state = probe_cgroups(sysroot)
    return {
        "version": state.version,
        "unified": state.unified,
        "controllers": dict(sorted(state.controllers.items())),
    }


def first_error_line(stderr: str) -> str:
    """The first meaningful line a runtime wrote: crun's text as is; runc's logrus lines unwrapped
    (`time="..." level=error msg="..."`, `ERRO[0000] ...`)."""
    for raw in stderr.splitlines():
        line = raw.strip()
        if not line:
            continue
        if 'msg="' in line:
            line = line.split('msg="', 1)[1].rsplit('"', 1)[0].replace('\\"', '"')
        elif line[:5] in ("ERRO[", "FATA[", "WARN[") and "]" in line:
            line = line.split("]", 1)[1].strip()
        return line
    return ""


def _nofile() -> tuple[int, int]:
    # Like the driver's plan: a runtime cannot raise RLIMIT_NOFILE above its caller's hard limit.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = hard if hard != resource.RLIM_INFINITY else 1 << 20
    return min(1024, hard), hard


def probe_spec(cid: str, rootfs: Path) -> ContainerSpec:
    """The test container: the driver's defaults, a cgroup under /virtkit, a pids limit."""
    return ContainerSpec(
        name=cid, uuid=cid, hostname="oci-probe", rootfs=str(rootfs),
        args=("/bin/busybox", "echo", MARKER), cgroup=f"/{PARENT}/{cid}", pids=PIDS, nofile=_nofile(),
    )  # fmt: skip


def _make_bundle(bundle: Path, cid: str, busybox: Path) -> None:
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    (bundle / "config.json").write_text(json.dumps(build_config(probe_spec(cid, rootfs))))


def trial(
    candidate: Candidate, busybox: Path, work: Path | None, timeout: float = TRIAL_TIMEOUT
) -> RuntimeTrial:
    """Run the test container with `candidate`; cleaned up whatever happens."""
    tmp = Path(tempfile.mkdtemp(prefix="oci-probe-", dir=work))
    cid = f"virtkit-oci-probe-{secrets.token_hex(4)}"
    state, bundle = tmp / "state", tmp / "bundle"
    argv = [candidate.path, "--root", str(state), "run", "--bundle", str(bundle), cid]

    def result(ok: bool, error: str = "", timed_out: bool = False) -> RuntimeTrial:
        elapsed = round(time.monotonic() - began, 3)
        return RuntimeTrial(candidate.name, candidate.path, candidate.version, ok, error, elapsed, timed_out)

    try:
        _make_bundle(bundle, cid, busybox)
        began = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return result(False, f"the test container did not finish within {timeout:g} s", timed_out=True)
        except OSError as exc:
            return result(False, f"cannot run {candidate.path}: {exc.strerror or exc}")
        if done.returncode == 0 and MARKER in done.stdout:
            return result(True)
        said = first_error_line(done.stderr)
        if done.returncode == 0:
            said = said or "the test container exited 0 without printing its marker"
        return result(False, said or f"exit status {done.returncode}, no message")
    finally:
        _clean(candidate.path, state, cid, tmp)


def _clean(binary: str, state: Path, cid: str, tmp: Path) -> None:
    if (state / cid).exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([binary, "--root", str(state), "delete", "--force", cid], capture_output=True,
                           timeout=CLEANUP_TIMEOUT, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    for mount in read_mounts(Path("/")):
        if mount.fstype in ("cgroup", "cgroup2"):
            _remove_cgroup(Path(mount.target) / PARENT / cid)
    shutil.rmtree(tmp, ignore_errors=True)


def _remove_cgroup(path: Path) -> None:
    deadline = time.monotonic() + CGROUP_REMOVE_TIMEOUT
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                log.warning("cannot remove the OCI probe's cgroup %s: %s", path, exc.strerror)
                return
            time.sleep(0.02)


def probe(candidates: Sequence[Candidate], busybox: Path, work: Path | None = None,
          timeout: float = TRIAL_TIMEOUT) -> OciRuntimeVerdict:  # fmt: skip
    """Try each candidate in order until one runs the test container."""
    trials: list[RuntimeTrial] = []
    for candidate in candidates:
        trials.append(trial(candidate, busybox, work, timeout))
        log.info("OCI runtime %s: %s", candidate.path, "works" if trials[-1].ok else trials[-1].error)
        if trials[-1].ok:
            break
    return OciRuntimeVerdict(tuple(trials), probed_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def load_cache(path: Path) -> dict[str, Any] | None:
    """The cache document at `path`, whatever its key; None when absent or not a document of ours."""
    try:
        document: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.info("ignoring the unreadable OCI runtime verdict %s: %s", path, exc)
        return None
    return document if isinstance(document, dict) and document.get("format") == _FORMAT else None


def read_cache(path: Path, key: dict[str, JsonValue]) -> OciRuntimeVerdict | None:
    """The stored verdict for `key`; None when absent, stale (another key) or malformed."""
    return cached_verdict(load_cache(path), key, path)


def cached_verdict(
    document: dict[str, Any] | None, key: dict[str, JsonValue], path: Path
) -> OciRuntimeVerdict | None:
    if document is None or document.get("key") != key:
        return None
    try:
        trials = tuple(RuntimeTrial.from_dict(t) for t in document["trials"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.info("ignoring the malformed OCI runtime verdict %s: %s", path, exc)
        return None
    probed_at = document.get("probed_at")
    verdict = OciRuntimeVerdict(
        trials, cached=True, probed_at=probed_at if isinstance(probed_at, str) else None
    )
    return verdict if verdict.chosen is not None else None


def cacheable(verdict: OciRuntimeVerdict) -> bool:
    """A verdict worth keeping: one runtime works, and no trial was cut short (a loaded host)."""
    return verdict.ran and verdict.chosen is not None and not any(t.timed_out for t in verdict.trials)


def write_cache(path: Path, key: dict[str, JsonValue], verdict: OciRuntimeVerdict) -> bool:
    """Store `verdict` for `key` atomically; False (logged) when it cannot be written."""
    document = {"format": _FORMAT, "key": key, "probed_at": verdict.probed_at,
                "trials": [t.to_dict() for t in verdict.trials]}  # fmt: skip
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write(path, json.dumps(document, indent=2) + "\n", mode=0o644)
    except (OSError, VirtkitError) as exc:
        log.warning("cannot cache the OCI runtime verdict in %s: %s", path, exc)
        return False
    return True


def _busybox(path: Path = HOST_BUSYBOX) -> Path:
    """The host's static busybox, checked (a dynamic one cannot run in an empty rootfs)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HostCapabilityError(
            f"{path}: {exc.strerror or exc}", hint="apt-get install busybox-static"
        ) from exc
    if elf.machine(data) != platform.machine() or not elf.is_static(data):
        raise HostCapabilityError(f"{path} is not a static busybox", hint="apt-get install busybox-static")
    return path


def probe_cached(
    state_root: Path, *, which: Which = shutil.which, timeout: float = TRIAL_TIMEOUT
) -> OciRuntimeVerdict:
    """This host's verdict: the cached one for the current key, else a fresh probe (then cached when
    `state_root` exists and the verdict is worth keeping)."""
    if os.geteuid() != 0:
        return OciRuntimeVerdict(not_run="it needs root (virtkit runs containers as root)")
    path = state_root / CACHE_FILE
    document = load_cache(path)
    candidates = find_candidates(which, known=known_versions(document))
    if not candidates:
        return OciRuntimeVerdict()
    key = cache_key(candidates)
    cached = cached_verdict(document, key, path)
    if cached is not None:
        return cached
    try:
        busybox = _busybox()
    except VirtkitError as exc:
        return OciRuntimeVerdict(not_run=f"no static busybox to test with: {exc} ({exc.hint})")
    exists = state_root.is_dir()
    work = state_root / "run" if exists else None  # where containers run, not a noexec /tmp
    try:
        if work is not None:
            work.mkdir(mode=0o755, exist_ok=True)
        verdict = probe(candidates, busybox, work, timeout)
    except (OSError, VirtkitError) as exc:
        return OciRuntimeVerdict(not_run=f"the test container could not be prepared: {exc}")
    if exists and cacheable(verdict):
        write_cache(path, key, verdict)
    return verdict


def select_runtime(state_root: Path, *, which: Which = shutil.which) -> str:
    """The path of the OCI runtime a new container gets: the probe's winner. When no probe could
    run (not root, no busybox), the first installed of runc, crun (runc works on every layout)."""
    verdict = probe_cached(state_root, which=which)
    if verdict.chosen is not None:
        return verdict.chosen.path
    if verdict.ran and verdict.trials:
        raise HostCapabilityError(
            f"no OCI runtime can run containers on this host: {verdict.refusals()}",
            hint="see `virtkit host check`; runc works on cgroup v1, hybrid and v2 (apt-get install runc)",
        )
    for name in ("runc", "crun"):
        found = which(name)
        if found is not None:
            log.info("OCI runtime not tested (%s): using %s", verdict.not_run or "none", found)
            return found
    raise HostCapabilityError(
        "no OCI runtime is installed: containers cannot run", hint="apt-get install runc"
    )
