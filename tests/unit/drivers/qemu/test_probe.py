"""The functional KVM probe without KVM: the per-boot verdict store, the not-run paths, the boot watcher
(driven by fake "QEMU" shell scripts) and how `check_host` wires the probe in."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from virtkit.drivers.qemu import probe, probecache
from virtkit.drivers.qemu.probe import (
    MARKER,
    NO_KVM,
    kvm_works,
    not_run,
    probe_argv,
    probe_cached,
    probe_kvm,
    write_initramfs,
)
from virtkit.drivers.qemu.probecache import VERDICT_FILE, read_verdict, write_verdict
from virtkit.errors import ToolError
from virtkit.host import FunctionalProbeResult
from virtkit.host.kvm import FunctionalProbe
from virtkit.ops import host as ops_host

FAILED = FunctionalProbeResult(False, f"{NO_KVM}: a test guest did not reach init within 8s under KVM", 8.0,
                               {"ran": True, "outcome": "timeout"})
PASSED = FunctionalProbeResult(True, "a test guest reached init under KVM in 0.4s", 0.4, {"ran": True})


class FakeHost:
    """A fake /proc, QEMU binary and /dev/kvm, a state directory, and a probe that counts its runs."""

    def __init__(self, tmp: Path) -> None:
        self.proc = tmp / "proc"
        (self.proc / "sys/kernel/random").mkdir(parents=True)
        self.set(boot_id="boot-1", release="6.1.0-test")
        self.qemu = tmp / "qemu-system-fake"
        self.set_qemu("8.2.0")
        self.device = tmp / "kvm"
        self.device.touch()
        self.state = tmp / "run" / "virtkit"
        self.cache = tmp / "cache"
        self.runs = 0
        self.result = FAILED

    def set(self, *, boot_id: str | None = None, release: str | None = None) -> None:
        if boot_id is not None:
            (self.proc / "sys/kernel/random/boot_id").write_text(boot_id + "\n")
        if release is not None:
            (self.proc / "sys/kernel/osrelease").write_text(release + "\n")

    def set_qemu(self, version: str) -> None:
        self.qemu.write_text(f"#!/bin/sh\necho 'QEMU emulator version {version}'\n")
        self.qemu.chmod(0o755)

    def probe(self) -> FunctionalProbeResult:
        self.runs += 1
        return self.result

    def cached(self, *, refresh: bool = False, probe: FunctionalProbe | None = None) -> FunctionalProbeResult:
        return probe_cached(self.cache, refresh=refresh, state_dir=self.state, proc=self.proc,
                            qemu=str(self.qemu), device=self.device, probe=probe or self.probe)

    def works(self, cache: Path | None = None) -> bool | None:
        return kvm_works(cache=cache, state_dir=self.state, proc=self.proc, qemu=str(self.qemu),
                         device=self.device)

    @property
    def file(self) -> Path:
        return self.state / VERDICT_FILE


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


def test_verdict_is_probed_once_per_boot(host: FakeHost) -> None:
    assert host.works() is None  # nothing probed yet this boot
    first = host.cached()
    assert (first.ok, host.runs) == (False, 1)
    second = host.cached()
    assert host.runs == 1
    assert (second.ok, second.summary, second.elapsed_s) == (False, FAILED.summary, 8.0)
    assert second.details["cached"] is True and second.details["outcome"] == "timeout"
    assert host.works() is False
    assert stat.S_IMODE(host.state.stat().st_mode) == 0o700
    assert stat.S_IMODE(host.file.stat().st_mode) == 0o600
    document = json.loads(host.file.read_text())
    assert document["key"]["boot_id"] == "boot-1"
    assert "QEMU emulator version 8.2.0" in document["key"]["qemu"]


def test_another_boot_kernel_or_qemu_probes_again(host: FakeHost) -> None:
    host.cached()
    host.set(boot_id="boot-2")
    host.result = PASSED
    assert host.cached().ok and host.runs == 2
    assert host.works() is True
    host.set(release="6.2.0-test")
    assert host.works() is None
    host.cached()
    host.set_qemu("9.0.0")
    host.cached()
    assert host.runs == 4
    host.cached()
    assert host.runs == 4


def test_refresh_probes_again(host: FakeHost) -> None:
    host.cached()
    host.result = PASSED
    assert host.cached(refresh=True).ok and host.runs == 2
    assert host.cached().details["cached"] is True


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b"\xff\xfe\x00",
        b"",
        b'{"format": 1}',
        b'{"format": 99, "key": null, "result": {}}',
    ],
)
def test_corrupt_verdict_file_probes_again(host: FakeHost, content: bytes) -> None:
    host.cached()
    host.file.write_bytes(content)
    assert host.works() is None
    assert host.cached().details.get("cached") is None and host.runs == 2
    assert host.works() is False  # rewritten whole


def test_malformed_result_fields_probe_again(host: FakeHost) -> None:
    host.cached()
    document = json.loads(host.file.read_text())
    for field, bad in (("ok", "yes"), ("summary", None), ("elapsed_s", True), ("details", [])):
        broken = {**document, "result": {**document["result"], field: bad}}
        host.file.write_text(json.dumps(broken))
        assert host.works() is None, field


def test_probe_that_did_not_run_is_not_stored(host: FakeHost) -> None:
    host.result = not_run("no guest kernel available")
    assert host.cached().summary == "not run: no guest kernel available"
    assert not host.file.exists()
    assert host.works() is None
    host.result = PASSED
    assert host.cached().ok and host.runs == 2


def test_unopenable_device_boots_nothing(host: FakeHost) -> None:
    host.cached()
    host.device.unlink()
    result = host.cached()
    assert not result.ok and result.summary.startswith("not run: cannot open")
    assert host.runs == 1
    assert host.works() is False  # no device: KVM certainly does not work


def test_works_with_cache_probes_when_unknown(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_probe_kvm(**kwargs: Any) -> FunctionalProbeResult:
        calls.append(kwargs)
        return PASSED

    monkeypatch.setattr(probe, "probe_kvm", fake_probe_kvm)
    assert host.works(cache=host.cache) is True
    assert host.works(cache=host.cache) is True
    assert len(calls) == 1 and calls[0]["cache"] == host.cache


def test_write_is_atomic(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    host.cached()
    before = host.file.read_text()

    def broken_replace(src: str, dst: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(probecache.os, "replace", broken_replace)
    key = json.loads(before)["key"]
    assert write_verdict(host.state, key, PASSED) is False
    monkeypatch.undo()
    unserialisable = FunctionalProbeResult(True, "x", 0.1, {"ran": True, "bad": object()})  # type: ignore[dict-item]
    assert write_verdict(host.state, key, unserialisable) is False
    assert host.file.read_text() == before
    assert sorted(p.name for p in host.state.iterdir()) == [VERDICT_FILE]
    assert read_verdict(host.state, key) is not None


def test_loose_state_dir_is_tightened(host: FakeHost) -> None:
    host.state.mkdir(parents=True, mode=0o755)
    host.state.chmod(0o755)
    host.cached()
    assert stat.S_IMODE(host.state.stat().st_mode) == 0o700


def test_unwritable_state_dir_still_answers(host: FakeHost) -> None:
    host.state.parent.mkdir(parents=True)
    host.state.write_text("a file where the directory should be")
    assert not host.cached().ok and host.runs == 1
    host.cached()
    assert host.runs == 2  # nothing could be stored


def test_not_run_paths_boot_nothing(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = host.device.parent / "missing-kvm"
    assert probe_kvm(cache=host.cache, device=gone).summary.startswith(f"not run: cannot open {gone}")
    missing = probe_kvm(cache=host.cache, device=host.device, qemu="/nonexistent/qemu-system-x86_64")
    assert missing.summary == "not run: /nonexistent/qemu-system-x86_64 not found"

    def offline(cache: Path, arch: str) -> None:
        raise ToolError("cannot reach deb.debian.org")

    monkeypatch.setattr(probe, "fetch_kernel", offline)
    result = probe_kvm(cache=host.cache, device=host.device, qemu=str(host.qemu), arch="x86_64")
    assert not result.ok and result.details["ran"] is False
    assert result.summary.startswith("not run: no guest kernel available")
    assert probe_kvm(cache=host.cache, arch="riscv64").summary == "not run: no probe guest for riscv64"


def test_cached_kernel_needs_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot = tmp_path / "debs" / "linux-image-6.1.0-9-amd64_6.1.1-1_amd64" / "boot"
    boot.mkdir(parents=True)
    (boot / "vmlinuz-6.1.0-9-amd64").touch()
    monkeypatch.setattr(probe, "fetch_kernel", None)  # calling it would fail the test
    assert probe.guest_kernel(tmp_path, "x86_64") == boot / "vmlinuz-6.1.0-9-amd64"
    (boot / "vmlinux-6.1.0-9-amd64").touch()
    assert probe.guest_kernel(tmp_path, "x86_64") == boot / "vmlinux-6.1.0-9-amd64"  # PVH ELF first


def test_initramfs_holds_busybox_and_init(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    out = tmp_path / "initrd"
    write_initramfs(out, busybox)
    data = out.read_bytes()
    assert data.startswith(b"070701") and b"TRAILER!!!" in data
    for member in (b"bin/busybox\0", b"init\0", b"dev\0", b"\x7fELF fake busybox"):
        assert member in data
    assert b"echo " + MARKER + b" > /dev/console" in data


def test_argv_per_accel(tmp_path: Path) -> None:
    kvm = probe_argv("qemu", "x86_64", "kvm", tmp_path / "k", tmp_path / "i")
    assert kvm[kvm.index("-accel") + 1] == "kvm" and kvm[kvm.index("-cpu") + 1] == "host"
    assert "-nodefaults" in kvm and "-no-reboot" in kvm and kvm[kvm.index("-M") + 1] == "microvm"
    assert "tsc_early_khz" not in kvm[kvm.index("-append") + 1]
    tcg = probe_argv("qemu", "x86_64", "tcg", tmp_path / "k", tmp_path / "i")
    assert tcg[tcg.index("-cpu") + 1] == "max"
    arm = probe_argv("qemu", "aarch64", "kvm", tmp_path / "k", tmp_path / "i")
    assert "console=ttyAMA0" in arm[arm.index("-append") + 1]


def _fake_qemu(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "fake-qemu"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return [str(script)]


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "fake-qemu" not in Path(f"/proc/{pid}/cmdline").read_text()


def test_marker_on_console_passes(tmp_path: Path) -> None:
    argv = _fake_qemu(tmp_path, f"printf 'booting\\r\\n{MARKER.decode()}\\r\\n'; exec sleep 30")
    result = probe._boot(argv, tmp_path / "stderr", "kvm", 5.0)
    assert result.ok and result.details["outcome"] == "init"
    assert result.summary.startswith("a test guest reached init under KVM in ")
    assert result.elapsed_s is not None and result.elapsed_s < 5.0
    assert result.details["reaped"] is True and _gone(int(str(result.details["pid"])))


def test_silent_guest_times_out_and_is_killed(tmp_path: Path) -> None:
    argv = _fake_qemu(tmp_path, "echo booting; exec sleep 30")
    result = probe._boot(argv, tmp_path / "stderr", "kvm", 0.5)
    assert not result.ok and result.details["outcome"] == "timeout"
    assert result.summary == f"{NO_KVM}: a test guest did not reach init within 0.5s under KVM"
    assert result.details["console_tail"] == "booting\n"
    assert _gone(int(str(result.details["pid"])))


def test_qemu_failing_to_start_reports_its_stderr(tmp_path: Path) -> None:
    argv = _fake_qemu(tmp_path, "echo 'failed to initialize kvm: Permission denied' >&2; exit 1")
    result = probe._boot(argv, tmp_path / "stderr", "kvm", 5.0)
    assert not result.ok and result.details["outcome"] == "exited"
    assert result.summary == (
        f"{NO_KVM}: QEMU exited (status 1) before the test guest reached init: "
        "failed to initialize kvm: Permission denied"
    )
    tcg = probe._boot(argv, tmp_path / "stderr", "tcg", 5.0)
    assert tcg.summary.startswith("QEMU exited (status 1)")  # no KVM wording under TCG


def test_check_host_wires_the_cached_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run_checks(**kwargs: Any) -> str:
        seen.update(kwargs)
        return "report"

    monkeypatch.setattr(ops_host, "run_checks", fake_run_checks)
    monkeypatch.setattr("virtkit.ops.images.cache_dir", lambda: tmp_path / "cache")
    cache = tmp_path / "cache"
    monkeypatch.setattr(probe, "probe_cached", lambda where: PASSED if where == cache else FAILED)
    ops_host.check_host(tmp_path, min_free=1)
    assert seen["min_free"] == 1 and seen["state_root"] == tmp_path
    assert seen["kvm_probe"]() is PASSED
    ops_host.check_host(tmp_path, probe_kvm=False)
    assert seen["kvm_probe"] is None
    ops_host.check_host(tmp_path, kvm_probe=lambda: FAILED)
    assert seen["kvm_probe"]() is FAILED
