"""The VM driver: the `Driver` contract met with QEMU (see drivers/base.py for the contract).

generate  record + image -> VmSpec (plan.py) -> argv (argv.py), with the notices to show
prepare   the instance's root disk: a qcow2 overlay on the image's immutable disk (grown to
          `disk_size`), or an empty disk for an ISO install; the UEFI variable store; the
          cloud-init seed (seed.py) for images that read one
start     QEMU spawned detached (process.py); returns once its monitor answers
wait_ready  bounded watch of the guest's readiness (boot.py)
stop      ACPI power button, then `quit`, then SIGKILL; pause/resume via QMP (monitor.py)
status    re-derived from the pidfile (guarded by the UUID), QMP and the runtime log
stats     CPU time and memory of its cgroup, its disks' bytes from QMP (stats.py)
exec      through the in-guest agent's virtio-serial port (agent.py)
plug_nic, attach_volume, ...  devices of a running VM changed through QMP (livedevices.py); a
          start hands QEMU the open files of its block volumes
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from virtkit import cloudinit
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
from virtkit.drivers.qemu import process, volumeplug
from virtkit.drivers.qemu.argv import build_argv, with_tap_fds
from virtkit.drivers.qemu.boot import BootRecord, watch_ready
from virtkit.drivers.qemu.confinement import apply_live, confined, live_changes, oom_reason, usage
from virtkit.drivers.qemu.disk import make_root_disk, remove_quietly
from virtkit.drivers.qemu.livedevices import PAUSED, LiveDevices
from virtkit.drivers.qemu.plan import (
    UEFI_FILES,
    VmFiles,
    build_spec,
    firmware_for,
    iso_for,
    seed_for,
)
from virtkit.drivers.qemu.seed import make_seed
from virtkit.drivers.qemu.spec import VmSpec
from virtkit.drivers.qemu.taps import taps
from virtkit.drivers.qemu.volumes import with_volume_fds
from virtkit.errors import HostCapabilityError, StateError, ToolError, VirtkitError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, InstanceState

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # QEMU's own start-up (not the guest's boot)
QUIT_WAIT = 5.0  # after `quit`, before SIGKILL
STATUS_TIMEOUT = 3.0
FAILED = {"internal-error", "io-error", "guest-panicked", "shutdown", "watchdog"}


class QemuDriver(LiveDevices):
    """Virtual machines under QEMU (KVM when it works here, TCG otherwise)."""

    kind = InstanceKind.VM

    def generate(
        self, record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
    ) -> Runtime:
        spec, notices = build_spec(record, image, image_dir, paths)
        return Runtime(kind="vm", argv=build_argv(spec), config=spec.to_dict(), notices=notices)

    def prepare(
        self, record: InstanceRecord, image: ImageRecord, image_dir: Path, paths: InstancePaths
    ) -> None:
        files = VmFiles(paths)
        paths.dir.mkdir(parents=True, exist_ok=True)
        iso = iso_for(record, image, image_dir)
        made = make_root_disk(record, image, image_dir, files.disk, iso=iso is not None)
        try:
            if firmware_for(record, image, iso) == "uefi" and not files.uefi_vars.exists():
                template = Path(UEFI_FILES[record.arch][1])
                if not template.is_file():
                    raise HostCapabilityError(
                        f"no UEFI variable store template at {template}",
                        hint=f"apt-get install {UEFI_FILES[record.arch][2]}",
                    )
                shutil.copyfile(template, files.uefi_vars)
            _make_seed(record, image, files)
        except BaseException:
            if made:
                remove_quietly(files.disk)
            remove_quietly(files.seed)
            raise

    def start(
        self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths, plugged: Plugged = None
    ) -> None:
        spec = VmSpec.from_dict(runtime.config)
        if process.running_pid(paths.pidfile, spec.uuid) is not None:
            raise StateError(f"{spec.name} is already running")
        files = VmFiles(paths)
        for stale in (paths.pidfile, paths.monitor, files.console_socket, files.agent_socket, files.ready):
            remove_quietly(stale)
        started_at, began = time.time(), time.monotonic()
        with paths.log.open("a") as runtime_log:
            runtime_log.write(f"virtkit: starting {spec.name} ({spec.accel}) at {time.ctime(started_at)}\n")
        boot = BootRecord(spec, started_at, process.size(Path(spec.console_log)), process.size(paths.log))
        with (
            confined(spec, paths) as (cgroup_fds, user),
            volumeplug.opened(spec) as volume_fds,
            taps(spec, user) as tap_fds,
        ):
            if plugged is not None:
                plugged()
            argv = with_volume_fds(with_tap_fds(runtime.argv, tap_fds), spec, volume_fds)
            fds = [*tap_fds.values(), *volume_fds.values()]
            pid = process.spawn(argv, paths.log, cgroup_fds=cgroup_fds, user=user, pass_fds=fds)
            self._wait_up(spec, pid, paths, boot, runtime.argv)
        boot.phases["spawn"] = time.monotonic() - began
        boot.save(files.boot)
        log.info("%s: QEMU pid %d up in %.2f s (%s)", spec.name, pid, boot.phases["spawn"], spec.accel)

    def _wait_up(
        self, spec: VmSpec, pid: int, paths: InstancePaths, boot: BootRecord, argv: list[str]
    ) -> None:
        """Until QEMU's monitor answers; ToolError with QEMU's last words if it exits or hangs first."""
        from virtkit.drivers.qemu.monitor import Monitor

        monitor = Monitor(paths.monitor, name=spec.name, connect_timeout=1.0, timeout=STATUS_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            code = process.exit_code(pid)
            if code is not None:
                said = process.death_reason(paths.log, boot.log_offset)
                raise ToolError(f"QEMU could not start {spec.name} (exit status {code}): {said}",
                                argv=argv, returncode=code, stderr=said)  # fmt: skip
            if paths.monitor.is_socket():
                try:
                    monitor.query_status()
                    return
                except StateError:
                    pass
            time.sleep(process.POLL)
        process.kill(pid, spec.uuid)
        raise ToolError(f"QEMU did not start {spec.name} within {START_TIMEOUT:g} s", argv=argv,
                        stderr=process.tail(paths.log, boot.log_offset))  # fmt: skip

    def wait_ready(self, record: InstanceRecord, paths: InstancePaths, timeout: float) -> dict[str, float]:
        files = VmFiles(paths)
        boot = self._boot(record, files)
        phases = watch_ready(
            boot,
            timeout,
            alive=lambda: process.running_pid(paths.pidfile, boot.spec.uuid) is not None,
            why_dead=lambda: process.death_reason(paths.log, boot.log_offset),
        )
        boot.phases = phases
        boot.save(files.boot)
        return phases

    def stop(self, record: InstanceRecord, paths: InstancePaths, *, force: bool, timeout: float) -> None:
        pid = process.running_pid(paths.pidfile, record.uuid)
        if pid is None:
            remove_quietly(paths.pidfile)  # a dead QEMU's leftover
            return
        if not force:
            if self._power_off(record, paths, pid, timeout):
                return
            log.warning("%s did not power off within %g s: forcing it off", record.name, timeout)
        try:
            self._monitor(record, paths, timeout=QUIT_WAIT).quit()
        except VirtkitError as exc:
            log.info("%s: quit failed (%s): killing QEMU", record.name, exc)
        if not process.wait_gone(pid, record.uuid, QUIT_WAIT) and not process.kill(pid, record.uuid):
            raise VirtkitError(
                f"QEMU (pid {pid}) of {record.name} survived SIGKILL", hint=f"see `ps -p {pid}`"
            )
        remove_quietly(paths.pidfile)  # QEMU removes it itself, unless killed

    def _power_off(self, record: InstanceRecord, paths: InstancePaths, pid: int, timeout: float) -> bool:
        """Press the power button (resuming a paused guest first: it must run to react); whether it went."""
        monitor = self._monitor(record, paths)
        try:
            if monitor.query_status() in PAUSED:
                monitor.cont()
            monitor.system_powerdown()
        except VirtkitError as exc:
            log.info("%s: no power button (%s)", record.name, exc)
            return not process.owns(pid, record.uuid)
        gone = process.wait_gone(pid, record.uuid, timeout)
        if gone and paths.pidfile.exists():  # QEMU removes it when it exits cleanly
            boot = BootRecord.load(VmFiles(paths).boot)
            offset = boot.log_offset if boot else 0
            why = (oom_reason(boot.spec) if boot else None) or process.death_reason(paths.log, offset)
            log.warning("%s did not power off cleanly: %s", record.name, why)
        return gone

    def pause(self, record: InstanceRecord, paths: InstancePaths) -> None:
        self._running(record, paths)
        self._monitor(record, paths).stop()

    def resume(self, record: InstanceRecord, paths: InstancePaths) -> None:
        self._running(record, paths)
        self._monitor(record, paths).cont()

    def status(self, record: InstanceRecord, paths: InstancePaths) -> Status:
        boot = BootRecord.load(VmFiles(paths).boot)
        offset = boot.log_offset if boot is not None else 0
        pid = process.read_pid(paths.pidfile)
        if pid is None:  # QEMU removes its pidfile when it exits cleanly
            said = process.tail(paths.log, offset, lines=1)
            return Status(InstanceState.STOPPED, reason=_signal_exit(said))
        if not process.owns(pid, record.uuid):
            reason = (oom_reason(boot.spec) if boot else None) or process.death_reason(paths.log, offset)
            return Status(InstanceState.ERROR, reason=reason, details={"stale_pid": pid})
        details = _details(boot)
        try:
            qemu_status = self._monitor(record, paths, timeout=STATUS_TIMEOUT).query_status()
        except VirtkitError as exc:
            return Status(InstanceState.RUNNING, pid=pid, reason=f"its monitor does not answer: {exc}",
                          details=details)  # fmt: skip
        details["qemu_status"] = qemu_status
        if qemu_status in FAILED:
            return Status(InstanceState.ERROR, pid=pid, reason=f"QEMU reports {qemu_status}", details=details)
        state = InstanceState.PAUSED if qemu_status in PAUSED else InstanceState.RUNNING
        return Status(state, pid=pid, details=details)

    def stats(self, record: InstanceRecord, paths: InstancePaths) -> Stats:
        """Its cgroup's (or QEMU's own) CPU time and memory, its disks' bytes from QMP (stats.py)."""
        from virtkit.drivers.qemu.stats import vm_stats

        pid = process.running_pid(paths.pidfile, record.uuid)
        if pid is None:
            return Stats()
        boot = BootRecord.load(VmFiles(paths).boot)
        cgroup = boot.spec.cgroup if boot is not None and boot.spec.uuid == record.uuid else None
        return vm_stats(record.name, pid, cgroup, paths.monitor)

    def exec(
        self, record: InstanceRecord, paths: InstancePaths, argv: Sequence[str], timeout: float
    ) -> ExecResult:
        from virtkit.drivers.qemu.agent import exec_on_port

        # The port's name says which agent answers: the tiny image's or qemu-guest-agent.
        return exec_on_port(*self._agent(record, paths, "exec"), list(argv), timeout)

    def frozen(self, record: InstanceRecord, paths: InstancePaths) -> contextlib.AbstractContextManager[str]:
        """The running guest's filesystems frozen for the block where qemu-guest-agent can
        (drivers/qemu/fsfreeze.py); a note saying what was done."""
        from virtkit.drivers.qemu.agent import QGA_PORT
        from virtkit.drivers.qemu.fsfreeze import UNFROZEN, frozen

        spec = self._boot(record, VmFiles(paths)).spec
        if spec.agent_socket is None or spec.agent_port != QGA_PORT:
            return contextlib.nullcontext(f"{UNFROZEN}: the guest has no qemu-guest-agent to freeze them")
        return frozen(Path(spec.agent_socket))

    def _agent(self, record: InstanceRecord, paths: InstancePaths, verb: str) -> tuple[str, Path]:
        """The running guest's agent: its port name and socket."""
        self._running(record, paths)
        spec = self._boot(record, VmFiles(paths)).spec
        if spec.agent_socket is None:
            raise HostCapabilityError(
                f"{record.name} has no command channel: {verb} needs virtio devices and an image "
                "with an agent",
                hint="the tiny and Debian images have one; --devices emulated has no virtio-serial port",
            )
        return spec.agent_port, Path(spec.agent_socket)

    def push_file(
        self, record: InstanceRecord, paths: InstancePaths, path: str, source: ByteSource, *,
        size: int | None, uid: int, gid: int, mode: int,
    ) -> int:
        """Write a file in the guest through its agent, in chunks (guestfiles.py)."""
        from virtkit.drivers.qemu import guestfiles

        with guestfiles.open_link(*self._agent(record, paths, "file push")) as link:
            return guestfiles.push(link, record.name, path, source, size=size, uid=uid, gid=gid, mode=mode)

    def pull_file(self, record: InstanceRecord, paths: InstancePaths, path: str, sink: ByteSink) -> int:
        from virtkit.drivers.qemu import guestfiles

        with guestfiles.open_link(*self._agent(record, paths, "file pull")) as link:
            return guestfiles.pull(link, record.name, path, sink)

    def open_console(self, record: InstanceRecord, paths: InstancePaths) -> Console:
        """QEMU's serial console socket."""
        return Console.connect(record.name, VmFiles(paths).console_socket)

    def log_decoder(self) -> Callable[[bytes], bytes]:
        return bytes  # QEMU's chardev logfile holds the serial output as it came

    def exec_attached(
        self, record: InstanceRecord, paths: InstancePaths, argv: Sequence[str], *, tty: bool, timeout: float
    ) -> int:
        """Through the guest agent: the output comes when the command ends; no terminal, no input."""
        if tty:
            hint = f"for a terminal, use its console: virtkit console {record.name}"
            raise StateError(f"{record.name} is a VM: its agent runs commands without a terminal", hint=hint)
        result = self.exec(record, paths, argv, timeout)
        for fd, data in ((1, result.stdout), (2, result.stderr)):
            while data:
                data = data[os.write(fd, data) :]
        return result.exit_code

    def run_foreground(
        self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths
    ) -> tuple[int, str]:
        raise StateError(
            f"{record.name} is a VM: `virtkit run` runs one command in a new container",
            hint=f"start it and run the command inside: virtkit exec {record.name} -- COMMAND",
        )

    def update(self, record: InstanceRecord, runtime: Runtime, paths: InstancePaths) -> None:
        """Bring the running VM to `runtime`'s limits: balloon, CPU quota, disk throttling."""
        self._running(record, paths)
        files = VmFiles(paths)
        boot = self._boot(record, files)
        wanted = VmSpec.from_dict(runtime.config)
        monitor = self._monitor(record, paths)
        balloon = monitor.balloon_actual() if boot.spec.devices == "virtio" else None
        changes = live_changes(boot.spec, wanted, balloon)
        if changes:
            boot.spec = apply_live(boot.spec, wanted, changes, monitor)
            boot.save(files.boot)

    def cleanup(self, record: InstanceRecord, paths: InstancePaths) -> None:
        if process.running_pid(paths.pidfile, record.uuid) is not None:
            raise StateError(f"{record.name} is still running", hint=f"virtkit stop {record.name}")
        files = VmFiles(paths)
        for leftover in (paths.pidfile, paths.monitor, files.console_socket, files.agent_socket):
            remove_quietly(leftover)
        boot = BootRecord.load(files.boot)
        if boot is not None and boot.spec.cgroup:
            Cgroup(boot.spec.cgroup).remove()
        remove_ports(record)


def _make_seed(record: InstanceRecord, image: ImageRecord, files: VmFiles) -> None:
    """The NoCloud seed from what the user gave at create time (kept by ops in the instance dir)."""
    seed = seed_for(record, image, files)
    if seed is not None:
        given = cloudinit.load(files.paths.dir)
        make_seed(seed, cloudinit.seed_files(record.uuid, record.name, given))


def _signal_exit(last_line: str) -> str:
    """A clean exit's reason worth telling: QEMU terminated by a signal someone sent it."""
    return process.without_timestamp(last_line) if "terminating on signal" in last_line else ""


def _details(boot: BootRecord | None) -> dict[str, object]:
    if boot is None:
        return {}
    spec = boot.spec
    return {
        "accel": spec.accel,
        "machine": spec.machine,
        "devices": spec.devices,
        "console_socket": spec.console_socket,
        "disks": [
            {"path": disk.path, "format": disk.format, "bus": disk.bus, "readonly": disk.readonly}
            for disk in spec.disks
        ],
        "started_at": boot.started_at,
        "phases": dict(boot.phases),
        **usage(spec),
    }
