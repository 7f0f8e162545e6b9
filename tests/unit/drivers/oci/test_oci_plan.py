"""The container driver's choices (plan.build_spec) and conmon's answers, on fake images: system
or application container, the init's stop signal, limits, the process limit's checks."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from virtkit.drivers.base import InstancePaths
from virtkit.drivers.oci.driver import _exit_reason
from virtkit.drivers.oci.monitor import _container_pid
from virtkit.drivers.oci.plan import build_spec, cgroup_of, container_id
from virtkit.errors import SpecError, ToolError
from virtkit.model import ImageRecord, InstanceKind, InstanceRecord, MiB

FP = "0" * 64


def _image(tmp_path: Path, *, init: bool = True, **changes: object) -> ImageRecord:
    rootfs = tmp_path / "rootfs"
    (rootfs / "sbin").mkdir(parents=True, exist_ok=True)
    if init:
        (rootfs / "sbin" / "init").write_text("")
    values: dict[str, object] = dict(
        fingerprint=FP, name="tiny", kinds=["vm", "container"], format="tiny", files={"rootfs": "rootfs"},
        properties={"os": "busybox", "init": "/sbin/init", "ready_marker": "VIRTKIT-READY"},
    )  # fmt: skip
    values.update(changes)
    return ImageRecord(**values)  # type: ignore[arg-type]


def _record(**config: str) -> InstanceRecord:
    return InstanceRecord(name="c1", kind=InstanceKind.CONTAINER, cpus=1.5, memory=64 * MiB, config=config)


def test_a_system_container_runs_its_init_with_limits(tmp_path: Path) -> None:
    record = _record(processes="200")
    spec = build_spec(record, _image(tmp_path), tmp_path, InstancePaths.of(tmp_path / "root", "c1"))
    assert spec.system and spec.args == ("/sbin/init",) and spec.stop_signal == "SIGUSR2"
    assert spec.rootfs == str(tmp_path / "root" / "instances" / "c1" / "rootfs") and spec.hostname == "c1"
    limits = (spec.cpu_quota, spec.cpu_period, spec.memory, spec.memory_swap)
    assert limits == (150_000, 100_000, 64 * MiB, 64 * MiB)  # 1.5 CPUs; no swap beyond the memory
    cid = container_id(record)
    assert spec.pids == 200 and spec.cgroup == cgroup_of(cid) == f"/virtkit/{cid}"
    assert spec.nofile[1] <= resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # runc cannot raise it


def test_systemd_halts_on_sigrtmin_3_and_apps_run_their_command(tmp_path: Path) -> None:
    paths = InstancePaths.of(tmp_path / "root", "c1")
    debian = _image(tmp_path, properties={"os": "debian", "init": "/sbin/init"})
    assert build_spec(_record(), debian, tmp_path, paths).stop_signal == "SIGRTMIN+3"
    app = _image(tmp_path, init=False, kinds=["container"], container={
        "entrypoint": ["/bin/web"], "cmd": ["--port", "80"], "env": ["A=1"], "workdir": "/srv"})
    spec = build_spec(_record(), app, tmp_path, paths)
    process = (spec.system, spec.args, spec.env, spec.cwd)
    assert process == (False, ("/bin/web", "--port", "80"), ("A=1",), "/srv")


def test_what_cannot_run_is_refused(tmp_path: Path) -> None:
    paths = InstancePaths.of(tmp_path / "root", "c1")
    with pytest.raises(SpecError, match="neither an OCI command nor an init"):
        build_spec(_record(), _image(tmp_path, init=False), tmp_path, paths)
    with pytest.raises(SpecError, match="cannot run as a container"):
        build_spec(_record(), _image(tmp_path, kinds=["vm"]), tmp_path, paths)
    for bad in ("0", "-1", "many", "99999999"):
        with pytest.raises(SpecError, match="invalid process limit"):
            build_spec(_record(processes=bad), _image(tmp_path), tmp_path, paths)


def test_conmon_answers() -> None:
    assert _container_pid(b'{"data": 4242}\n', "c1", "") == 4242
    with pytest.raises(ToolError, match="could not create c1: exec: no such file"):
        _container_pid(b'{"data": -1, "message": "exec: no such file"}', "c1", "")
    with pytest.raises(ToolError, match="conmon died before it created c1: bad flag"):
        _container_pid(b"", "c1", "bad flag\n")
    with pytest.raises(ToolError, match="unexpected answer"):
        _container_pid(b"garbage", "c1", "")


def test_exit_reasons() -> None:
    assert _exit_reason(137) == "its init was killed by SIGKILL"
    assert _exit_reason(3) == "its init exited with status 3"


def test_real_time_stop_signals_are_sent_by_number() -> None:
    from virtkit.drivers.oci.runtime import signal_number

    assert signal_number("SIGRTMIN+3") == "37"  # runc 1.1 rejects the name; systemd halts on it
    assert signal_number("SIGUSR2") == "SIGUSR2"
