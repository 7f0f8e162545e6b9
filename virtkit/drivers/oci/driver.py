"""The container driver: the `Driver` contract met with an OCI runtime (runc or crun) under conmon.

generate  record + image -> ContainerSpec (plan.py) -> config.json (bundle.py), pure; and the OCI
          runtime: the container's own, else the functional probe's cached choice (probe.py)
prepare   its own range of host ids (idmap.py), its upper and work directories (the image's
          rootfs is the shared lower layer, shown shifted into that range: rootfs.py)
start     overlay mounted, config.json written, conmon + `runc create` + `runc start` (monitor.py)
wait_ready  the image's readiness marker in what this boot wrote to the container's log, bounded
stop      the init's own stop signal, until only PID 1 is left or it exits (systemd: until it
          exits, systemd.py); then SIGKILL
status    runc's state (which guards the init PID by its start time), conmon's exit file
stats     its cgroup's CPU time, memory and block I/O bytes (stats.py)
exec      `runc exec`, exit code passed through
volumes   bind mounts of filesystem volumes, idmapped: staged at each start (mounts.py), or moved
          into a running container's mount namespace (mountns.py)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from virtkit.drivers.base import (
    ByteSink,
    ByteSource,
    ExecResult,
    InstancePaths,
    Plugged,
    Runtime,
    Stats,
    Status,
)
from virtkit.drivers.cgroup import Cgroup
from virtkit.drivers.console import Console
from virtkit.drivers.nics import remove_ports
from virtkit.drivers.oci import foreground, idmap, monitor, mountns, mounts, ports, rootfs, systemd
from virtkit.drivers.oci.bundle import build_config
from virtkit.drivers.oci.logfile import LogDecoder
from virtkit.drivers.oci.plan import ContainerFiles, build_spec, cgroup_of, container_id
from virtkit.drivers.oci.runtime import CONFIG_KEY, DEFAULT_RUNTIME, OciRuntime, runtime_binary, runtime_of
from virtkit.drivers.oci.spec import ContainerSpec
from virtkit.errors import StateError, VirtkitError
from virtkit.images.staged import ROOTFS
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, InstanceState, Nic, VolumeAttachment
from virtkit.store import atomic_write

log = logging.getLogger(__name__)

POLL = 0.02
KILL_WAIT = 10.0
SIGNALS = {9: "SIGKILL", 15: "SIGTERM", 2: "SIGINT", 6: "SIGABRT", 11: "SIGSEGV"}


def _runc(paths: InstancePaths, runtime: Runtime | None = None) -> OciRuntime:
    """The OCI runtime that runs this container: the one its (saved) runtime records."""
    config = runtime.config if runtime is not None else _saved_config(paths)
    return runtime_of(paths.dir.parent.parent, config)


def _saved_config(paths: InstancePaths) -> dict[str, object]:
    try:
        return _saved_runtime(paths).config
    except (OSError, ValueError, KeyError):
        return {}


def _oci_runtime(paths: InstancePaths) -> str:
    """A container keeps the runtime it was made with (runc, if made before this was recorded); a
    new one gets the functional probe's choice (cached: see probe.py)."""
    if paths.runtime.exists():
        saved = _saved_config(paths).get(CONFIG_KEY)
        return str(saved) if saved else runtime_binary(DEFAULT_RUNTIME)
    from virtkit.drivers.oci.probe import select_runtime

    return select_runtime(paths.dir.parent.parent)


def _spec(runtime: Runtime) -> ContainerSpec:
    return ContainerSpec.from_dict(runtime.config["spec"])


def _exit_reason(code: int) -> str:
    if code > 128:
        return f"its init was killed by {SIGNALS.get(code - 128, f'signal {code - 128}')}"
    return f"its init exited with status {code}"


class OciDriver:
    """Containers under runc, each monitored by its own conmon."""

    kind = InstanceKind.CONTAINER

    def generate(
        self, record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
    ) -> Runtime:
        ids = idmap.plan(record, paths)
        spec = build_spec(record, image, image_dir, paths, ids.shift)
        lower, layers = _lowers(record, image, image_dir, paths)
        volumes = mounts.plan(record.volumes, paths.dir)
        config: dict[str, object] = {
            "spec": spec.to_dict(),
            "lower": str(lower),
            "ready_marker": image.properties.get("ready_marker", ""),
            "bundle": build_config(spec, volumes),
            CONFIG_KEY: _oci_runtime(paths),
        }
        if volumes:
            config["volumes"] = [mount.to_dict() for mount in volumes]
        if layers:
            config["layers"] = [str(layer) for layer in layers]
        notices = [ids.notice(record.name)] if ids.notice(record.name) else []
        if spec.privileged:
            notices.append(
                f"{record.name} is privileged: all {len(spec.caps or ())} capabilities virtkit has, no "
                "seccomp filter, no masked or read-only /proc and /sys paths, every device, no user "
                "namespace: root in it is root on the host"
            )
        return Runtime(kind="container", config=config, notices=notices)

    def prepare(
        self, record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
    ) -> None:
        files = ContainerFiles(paths)
        files.bundle.mkdir(mode=0o755, parents=True, exist_ok=True)
        shift = idmap.allocate(record, paths).shift
        if shift is not None:  # its root (no host root) must enter the directory to reach its rootfs
            os.chown(paths.dir, 0, shift.gid)
            os.chmod(paths.dir, 0o750)
        lower, layers = _lowers(record, image, image_dir, paths)
        rootfs.prepare(rootfs.Layers(lower, files.upper, files.work, files.merged, shift, layers))

    def _layers(self, runtime: Runtime, files: ContainerFiles) -> rootfs.Layers:
        return rootfs.Layers(Path(runtime.config["lower"]), files.upper, files.work, files.merged,
                             extra=_saved_layers(runtime))  # fmt: skip

    def start(
        self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths, plugged: Plugged = None
    ) -> None:
        files = ContainerFiles(paths)
        spec = _spec(runtime)
        runc, cid = _runc(paths, runtime), container_id(record)
        runc.delete(cid)  # a stopped container of a previous run
        idmap.require_entry(paths)
        volumes = mounts.saved(runtime.config)
        rootfs.mount(self._layers(runtime, files))
        try:
            mounts.attach_stages(volumes, rootfs.saved_shift(paths.dir))
            atomic_write(files.config, json.dumps(runtime.config["bundle"], indent=2) + "\n")
            mon = _monitor_files(paths)
            (mon.exits / cid).unlink(missing_ok=True)
            began = time.monotonic()
            # conmon appends to the log: readiness is looked for in what this boot writes only
            offset = mon.log.stat().st_size if mon.log.exists() else 0
            systemd.delegate(spec)
            monitor.launch(
                cid, spec.name, mon, runc, terminal=spec.terminal, created=ports.plugger(spec, plugged)
            )
            mounts.detach_stages(volumes)  # runc bound them: the container's namespace holds its copies
            boot = {"spawn": time.monotonic() - began, "log": offset}
            atomic_write(paths.dir / "boot.json", json.dumps(boot))
        except BaseException:
            runc.delete(cid)
            mounts.detach_stages(volumes)
            rootfs.unmount(files.merged)
            raise

    def wait_ready(self, record: InstanceRecord, paths: InstancePaths, timeout: float) -> dict[str, float]:
        phases: dict[str, float] = json.loads((paths.dir / "boot.json").read_text())
        offset = int(phases.pop("log", 0))
        marker = _marker(paths)
        log_path = _monitor_files(paths).log
        began, deadline = time.monotonic(), time.monotonic() + timeout
        while marker:
            if marker in _log_since(log_path, offset):
                break
            if self.status(record, paths).state is not InstanceState.RUNNING:
                raise StateError(f"{record.name} stopped before it was ready", hint=f"see {log_path}")
            if time.monotonic() >= deadline:
                raise VirtkitError(f"{record.name} did not announce readiness within {timeout:g} s")
            time.sleep(POLL)
        phases["ready"] = phases["spawn"] + time.monotonic() - began
        return phases

    def stop(self, record: InstanceRecord, paths: InstancePaths, *, force: bool, timeout: float) -> None:
        runc, cid = _runc(paths), container_id(record)
        state = runc.state(cid)
        if state is None or state.get("status") == "stopped":
            return
        if state.get("status") == "paused":
            runc.resume(cid)
        if not force:
            spec = _spec(_saved_runtime(paths))
            runc.kill(cid, spec.stop_signal)
            # systemd ends the container itself once halted: wait for that, not for the moment its
            # last service is gone (it has its own shutdown still to run then).
            alone = None if systemd.exits_when_halted(spec) else spec.cgroup
            if self._wait_down(runc, cid, alone, timeout):
                runc.kill(cid, "SIGKILL", all_processes=True)
                self._wait_down(runc, cid, None, KILL_WAIT)
                return
            log.warning("%s did not stop within %g s: killing it", record.name, timeout)
        runc.kill(cid, "SIGKILL", all_processes=True)
        if not self._wait_down(runc, cid, None, KILL_WAIT):
            hint = f"see `{runc.name} --root {runc.state_dir} ps {cid}`"
            raise VirtkitError(f"{record.name} survived SIGKILL", hint=hint)

    @staticmethod
    def _wait_down(runc: OciRuntime, cid: str, cgroup: str | None, timeout: float) -> bool:
        """Until the container stopped or (with `cgroup`) only its init is left; whether it did."""
        deadline = time.monotonic() + timeout
        while True:
            state = runc.state(cid)
            if state is None or state.get("status") == "stopped":
                return True
            if cgroup is not None and len(_cgroup_pids(cgroup)) <= 1:
                return True  # the init stopped everything it runs: only its own halt is left
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)

    def pause(self, record: InstanceRecord, paths: InstancePaths) -> None:
        _runc(paths).pause(container_id(record))

    def resume(self, record: InstanceRecord, paths: InstancePaths) -> None:
        _runc(paths).resume(container_id(record))

    def status(self, record: InstanceRecord, paths: InstancePaths) -> Status:
        runc, cid = _runc(paths), container_id(record)
        state = runc.state(cid)
        mon = _monitor_files(paths)
        status = (state or {}).get("status")
        if status in ("running", "paused", "created"):
            pid = int(state["pid"]) if state and state.get("pid") else None
            reason = "" if monitor.conmon_alive(mon, cid) else "its monitor (conmon) is gone"
            live = InstanceState.PAUSED if status == "paused" else InstanceState.RUNNING
            return Status(live, pid=pid, reason=reason, details=_details(cid, runc.name))
        code = monitor.exit_status(mon, cid)
        if status == "stopped" and code:  # it ended by itself, not by virtkit's stop (which cleans up)
            return Status(InstanceState.ERROR, reason=_exit_reason(code), details={"exit_code": code})
        return Status(InstanceState.STOPPED, reason=_exit_reason(code) if code is not None else "")

    def stats(self, record: InstanceRecord, paths: InstancePaths) -> Stats:
        """Its cgroup's counters (stats.py): there while runc keeps the container."""
        from virtkit.drivers.oci.stats import cgroup_stats

        return cgroup_stats(Cgroup(cgroup_of(container_id(record)).lstrip("/")))

    def exec(
        self, record: InstanceRecord, paths: InstancePaths, argv: Sequence[str], timeout: float
    ) -> ExecResult:
        return _runc(paths).exec(container_id(record), argv, timeout)

    def open_console(self, record: InstanceRecord, paths: InstancePaths) -> Console:
        """conmon's attach socket: the pty of a system container (or a -t one); output only for
        an application container, whose stdin is not kept."""
        bundle = ContainerFiles(paths).bundle
        return Console.connect(record.name, bundle / "attach", control=bundle / "ctl", framed=True)

    def log_decoder(self) -> Callable[[bytes], bytes]:
        return LogDecoder()

    def exec_attached(
        self, record: InstanceRecord, paths: InstancePaths, argv: Sequence[str], *, tty: bool, timeout: float
    ) -> int:
        """`runc exec` with the caller's stdio: output streams, input flows (no time limit)."""
        files = ContainerFiles(paths)
        env = tuple(_spec(_saved_runtime(paths)).env)
        foreground.find_command(files.merged, argv[0], env, where=f"instance {record.name}", live=True)
        log = files.bundle / f"exec-{os.getpid()}.log"
        try:
            return foreground.exec_in(_runc(paths), container_id(record), list(argv), tty=tty, log=log)
        finally:
            log.unlink(missing_ok=True)

    def run_foreground(
        self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths
    ) -> tuple[int, str]:
        """Run the container with the caller's stdio until its command ends (`virtkit run`)."""
        runc, cid = _runc(paths), container_id(record)
        runc.delete(cid)
        idmap.require_entry(paths)
        systemd.delegate(_spec(runtime))  # as start does: systemd as the command makes its cgroups
        lower = Path(runtime.config["lower"])
        volumes = mounts.saved(runtime.config)
        mounts.attach_stages(volumes, rootfs.saved_shift(paths.dir))
        try:
            return foreground.run_bundle(runtime.config["bundle"], lower, paths, runc, cid,
                                         extra=_saved_layers(runtime))  # fmt: skip
        finally:
            mounts.detach_stages(volumes)

    def update(self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths) -> None:
        """CPU quota, memory and pids through `runc update`; what runc 1.1 would take silently and
        not apply (disk throttles) is refused while the container runs."""
        now, wanted = _spec(_saved_runtime(paths)), _spec(runtime)
        fixed = ("io_device", "io_iops", "io_bps", "io_weight")
        if any(getattr(now, key) != getattr(wanted, key) for key in fixed):
            raise StateError(f"{record.name}'s disk throttles can change only while it is stopped",
                             hint=f"virtkit stop {record.name}, then set them")  # fmt: skip
        resources = runtime.config["bundle"]["linux"].get("resources", {})
        _runc(paths).update(container_id(record), {k: v for k, v in resources.items() if k != "devices"})

    def plug_nic(self, record: InstanceRecord, paths: InstancePaths, nic: Nic, bridge: str) -> None:
        status = self.status(record, paths)
        if status.pid is None or status.state is not InstanceState.RUNNING:
            raise StateError(
                f"{record.name} is {status.state.value}: a NIC is plugged into a running container"
            )
        ports.plug(status.pid, nic, bridge)

    def unplug_nic(self, record: InstanceRecord, paths: InstancePaths, nic: Nic) -> None:
        from virtkit.network import links

        links.delete(nic.device)  # its peer in the container goes with it

    def attach_volume(
        self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment, *, live: bool
    ) -> None:
        """Check that the volume's directory can be shown in the container's ids (as its next start
        will); with `live`, mount it in the running container now (mountns.py)."""
        (mount,) = mounts.plan([volume], paths.dir)
        shift = rootfs.saved_shift(paths.dir)
        if not live:
            mounts.check(mount.source, shift)
            return
        pid = self._live_pid(record, paths, "mounted into")
        tree = mounts.clone(mount.source, shift)
        try:
            mountns.attach(pid, tree, mount.destination, shift)
        finally:
            os.close(tree)

    def detach_volume(self, record: InstanceRecord, paths: InstancePaths, volume: VolumeAttachment) -> None:
        """Unmount the volume from the running container (lazily: see mountns.py)."""
        (mount,) = mounts.plan([volume], paths.dir)
        mountns.detach(self._live_pid(record, paths, "unmounted from"), mount.destination, mount.source)

    def _live_pid(self, record: InstanceRecord, paths: InstancePaths, verb: str) -> int:
        status = self.status(record, paths)
        if status.pid is None or status.state not in (InstanceState.RUNNING, InstanceState.PAUSED):
            raise StateError(f"{record.name} is {status.state.value}: a volume is {verb} a running container")
        return status.pid

    def cleanup(self, record: InstanceRecord, paths: InstancePaths) -> None:
        runc, cid = _runc(paths), container_id(record)
        state = runc.state(cid)
        if state is not None and state.get("status") in ("running", "paused"):
            raise StateError(f"{record.name} is still running", hint=f"virtkit stop {record.name}")
        runc.delete(cid)
        remove_ports(record)
        mounts.clear(paths.dir)
        files = ContainerFiles(paths)
        rootfs.unmount(files.merged)
        (_monitor_files(paths).exits / cid).unlink(missing_ok=True)

    def push_file(
        self, record: InstanceRecord, paths: InstancePaths, path: str, source: ByteSource, *,
        size: int | None, uid: int, gid: int, mode: int,
    ) -> int:
        """Write a file inside, never through a symlink out of the root (files.py)."""
        from virtkit.drivers.oci import files

        target = files.Container(record.name, container_id(record), _runc(paths), paths)
        return files.push(target, path, source, uid=uid, gid=gid, mode=mode)

    def pull_file(self, record: InstanceRecord, paths: InstancePaths, path: str, sink: ByteSink) -> int:
        from virtkit.drivers.oci import files

        return files.pull(files.Container(record.name, container_id(record), _runc(paths), paths), path, sink)


def _lowers(
    record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
) -> tuple[Path, tuple[Path, ...]]:
    """The container's read-only layers: the bottom one (the image's tree, or for a full copy or a
    flattened clone its own base/, or its last layer) and the shared layers above it, nearest
    first (docs/clones.md)."""
    from virtkit.storage.layers import layer_path, root_of

    layers = tuple(layer_path(root_of(paths.dir), layer, record.kind) for layer in record.layers)
    if record.base == "own":
        return paths.dir / "base", layers
    if record.base == "layer" and layers:
        return layers[-1], layers[:-1]
    return image_dir / image.files[ROOTFS], layers


def _saved_layers(runtime: Runtime) -> tuple[Path, ...]:
    return tuple(Path(layer) for layer in runtime.config.get("layers", []))


def _saved_runtime(paths: InstancePaths) -> Runtime:
    return Runtime.from_dict(json.loads(paths.runtime.read_text()))


def _marker(paths: InstancePaths) -> bytes:
    try:
        return str(_saved_runtime(paths).config.get("ready_marker") or "").encode()
    except (OSError, ValueError):
        return b""


def _log_since(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return log.read()
    except FileNotFoundError:
        return b""


def _monitor_files(paths: InstancePaths) -> monitor.MonitorFiles:
    return monitor.MonitorFiles(ContainerFiles(paths).bundle, paths.console_log)


def _details(cid: str, runtime: str) -> dict[str, object]:
    cgroup = Cgroup(cgroup_of(cid).lstrip("/"))
    return {
        "runtime": runtime,
        "container_id": cid,
        "cgroup": cgroup.relative,
        "cpu_seconds": cgroup.cpu_seconds(),
        "memory_used": cgroup.memory_bytes(),
    }


def _cgroup_pids(cgroup: str) -> list[int]:
    return Cgroup(cgroup.lstrip("/")).pids()
