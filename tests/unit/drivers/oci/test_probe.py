"""The OCI runtime probe without a real runtime: cache keying, the verdict file, error lines, the
order of trials (fake runtimes are shell scripts), and which runtime a container is driven by."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from virtkit.drivers.oci import probe
from virtkit.drivers.oci.probe import Candidate, cache_key, first_error_line, read_cache, write_cache
from virtkit.drivers.oci.runtime import CONFIG_KEY, OciRuntime, runtime_of
from virtkit.errors import HostCapabilityError
from virtkit.host.checks import JsonValue
from virtkit.host.ociruntime import OciRuntimeVerdict, RuntimeTrial

CRUN = Candidate("crun", "/usr/bin/crun", "crun version 1.8.1", (11, 490184, 1_698_943_966_000_000_000))
RUNC = Candidate("runc", "/usr/sbin/runc", "runc version 1.1.5+ds1", (22, 8752456, 1_706_881_985_000_000_000))
LAYOUT: dict[str, JsonValue] = {
    "version": "hybrid",
    "unified": "/sys/fs/cgroup/unified",
    "controllers": {"cpu": "v1"},
}
REFUSAL = "cgroups in hybrid mode not supported, drop all controllers from cgroupv2"


def _key(
    *candidates: Candidate, kernel: str = "6.1.0-18-amd64", cgroups: dict[str, JsonValue] | None = None
) -> dict[str, JsonValue]:
    return cache_key(
        candidates or (CRUN, RUNC), kernel=kernel, cgroups=LAYOUT if cgroups is None else cgroups
    )


def _verdict() -> OciRuntimeVerdict:
    return OciRuntimeVerdict(
        (
            RuntimeTrial("crun", CRUN.path, "1.8.1", False, REFUSAL, 0.03),
            RuntimeTrial("runc", RUNC.path, "1.1.5", True, "", 0.12),
        ),
        probed_at="2024-01-01T00:00:00+0000",
    )


def test_the_key_changes_with_each_runtime_binary_the_kernel_and_the_cgroup_layout() -> None:
    base = _key()
    assert base == _key(), "the same host gives the same key"
    assert base["kernel"] == "6.1.0-18-amd64" and base["cgroups"] == LAYOUT
    upgraded = replace(
        RUNC, version_line="runc version 1.1.12", stat=(22, 8752456, 1_800_000_000_000_000_000)
    )
    touched = replace(CRUN, stat=(11, 490184, CRUN.stat[2] + 1))
    changes = [
        _key(CRUN, upgraded),
        _key(touched, RUNC),
        _key(replace(CRUN, path="/usr/local/bin/crun"), RUNC),
        _key(RUNC),  # crun uninstalled
        _key(kernel="6.1.0-20-amd64"),
        _key(cgroups={**LAYOUT, "version": "v2", "unified": "/sys/fs/cgroup"}),
    ]
    for changed in changes:
        assert changed != base
    assert json.loads(json.dumps(base)) == base, "the key survives its JSON round trip"


def test_a_candidate_names_its_version() -> None:
    assert (CRUN.version, RUNC.version) == ("1.8.1", "1.1.5")
    identity = {"name": "crun", "path": "/usr/bin/crun", "version": "crun version 1.8.1",
                "inode": 11, "size": 490184, "mtime_ns": 1_698_943_966_000_000_000}  # fmt: skip
    assert CRUN.identity() == identity


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_installed_candidates_in_order_of_preference(tmp_path: Path) -> None:
    runc = _script(tmp_path / "runc", 'echo "runc version 1.1.5+ds1"; echo "commit: x"\n')
    found = probe.find_candidates({"runc": runc}.get)
    assert [(c.name, c.path, c.version_line, c.version) for c in found] == [
        ("runc", runc, "runc version 1.1.5+ds1", "1.1.5")
    ]
    assert found[0].stat[1] == os.stat(runc).st_size
    crun = _script(tmp_path / "crun", 'echo "crun version 1.8.1"\n')
    assert [c.name for c in probe.find_candidates({"runc": runc, "crun": crun}.get)] == ["crun", "runc"]
    assert probe.find_candidates(lambda _name: None) == []


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        (REFUSAL + "\n", REFUSAL),
        ("\n  \nfirst\nsecond\n", "first"),
        ('time="2024-01-01T00:00:00Z" level=error msg="runc run failed: unable to start container '
         'process: exec: \\"/bin/nope\\": no such file"\n', 'runc run failed: unable to start container '
         'process: exec: "/bin/nope": no such file'),
        ("ERRO[0000] runc run failed: cgroup not found\n", "runc run failed: cgroup not found"),
        ("", ""),
    ],
)  # fmt: skip
def test_the_first_line_of_what_a_runtime_said(stderr: str, line: str) -> None:
    assert first_error_line(stderr) == line


def test_a_verdict_round_trips_through_its_cache_file(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "oci-runtime.json"
    assert read_cache(path, _key()) is None, "no file: a miss"
    assert write_cache(path, _key(), _verdict())
    cached = read_cache(path, _key())
    assert cached is not None and cached.cached and cached.probed_at == "2024-01-01T00:00:00+0000"
    assert cached.trials == _verdict().trials
    assert cached.chosen is not None and cached.chosen.path == "/usr/sbin/runc"
    assert cached.refusals() == f"crun 1.8.1 refused: {REFUSAL}"
    assert read_cache(path, _key(kernel="6.2.0")) is None, "another key: stale"
    assert [p.name for p in path.parent.iterdir()] == ["oci-runtime.json"], "no temporary file left"


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"format": 99}',
        '{"format": 1, "key": KEY}',
        '{"format": 1, "key": KEY, "trials": [{"name": "runc"}]}',
        '{"format": 1, "key": KEY, "trials": [{"name": "runc", "path": "/r", "version": 1, "ok": true}]}',
        '{"format": 1, "key": KEY, "trials": [{"name": "crun", "path": "/c", "version": null, "ok": false}]}',
    ],
)
def test_a_corrupt_or_foreign_cache_file_is_a_miss(tmp_path: Path, content: str) -> None:
    path = tmp_path / "oci-runtime.json"
    path.write_text(content.replace("KEY", json.dumps(_key())))
    assert read_cache(path, _key()) is None


def test_only_a_clear_verdict_is_worth_keeping() -> None:
    assert probe.cacheable(_verdict())
    crun_slow = RuntimeTrial("crun", CRUN.path, "1.8.1", False, "no answer", 10.0, timed_out=True)
    assert not probe.cacheable(OciRuntimeVerdict((crun_slow, _verdict().trials[1])))
    assert not probe.cacheable(OciRuntimeVerdict(_verdict().trials[:1])), "nothing works: probe again"
    assert not probe.cacheable(OciRuntimeVerdict(not_run="not root"))


def test_write_cache_reports_a_failure_instead_of_raising(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the directory should be")
    assert not write_cache(blocker / "oci-runtime.json", _key(), _verdict())


def _fake_runtimes(tmp_path: Path) -> tuple[Candidate, Candidate]:
    crun = _script(tmp_path / "crun", f'echo "{REFUSAL}" >&2; exit 1\n')
    # A runtime that runs the config's process: prove the bundle was made as the probe says.
    bundle = '"$5"'  # RUNTIME --root STATE run --bundle BUNDLE ID
    runc = _script(tmp_path / "runc", f"test -x {bundle}/rootfs/bin/busybox && "
                   f"grep -q {probe.MARKER} {bundle}/config.json && echo {probe.MARKER}\n")  # fmt: skip
    return replace(CRUN, path=crun), replace(RUNC, path=runc)


def test_trials_stop_at_the_first_runtime_that_works(tmp_path: Path) -> None:
    crun, runc = _fake_runtimes(tmp_path)
    busybox = _script(tmp_path / "busybox", "exit 0\n")
    work = tmp_path / "work"
    work.mkdir()
    verdict = probe.probe([crun, runc, replace(RUNC, name="third")], Path(busybox), work)
    assert [(t.name, t.ok, t.error) for t in verdict.trials] == [("crun", False, REFUSAL), ("runc", True, "")]
    assert verdict.chosen is not None and verdict.chosen.version == "1.1.5"
    assert list(work.iterdir()) == [], "every trial cleans up after itself"


def test_a_runtime_that_hangs_is_refused_within_the_timeout(tmp_path: Path) -> None:
    hang = replace(CRUN, path=_script(tmp_path / "crun", "exec sleep 30\n"))
    silent = replace(RUNC, path=_script(tmp_path / "runc", "exit 0\n"))
    busybox = Path(_script(tmp_path / "busybox", "exit 0\n"))
    verdict = probe.probe([hang, silent], busybox, tmp_path, timeout=0.3)
    slow, quiet = verdict.trials
    assert slow.timed_out and not slow.ok and "did not finish within 0.3 s" in slow.error
    assert slow.elapsed_s is not None and slow.elapsed_s < 5
    assert not quiet.ok and "without printing its marker" in quiet.error
    assert verdict.chosen is None and not probe.cacheable(verdict)


def test_select_runtime_follows_the_verdict(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def verdict_is(verdict: OciRuntimeVerdict) -> None:
        monkeypatch.setattr(probe, "probe_cached", lambda *_a, **_k: verdict)

    verdict_is(_verdict())
    assert probe.select_runtime(tmp_path) == "/usr/sbin/runc"
    verdict_is(OciRuntimeVerdict(_verdict().trials[:1]))
    with pytest.raises(HostCapabilityError, match=r"crun 1\.8\.1 refused: cgroups in hybrid mode"):
        probe.select_runtime(tmp_path)
    verdict_is(OciRuntimeVerdict(not_run="it needs root"))
    assert probe.select_runtime(tmp_path, which={"crun": "/c", "runc": "/r"}.get) == "/r", "untested: runc"
    assert probe.select_runtime(tmp_path, which={"crun": "/c"}.get) == "/c"
    verdict_is(OciRuntimeVerdict())
    with pytest.raises(HostCapabilityError, match="no OCI runtime is installed"):
        probe.select_runtime(tmp_path, which=lambda _name: None)


def test_probe_cached_without_root_runs_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    verdict = probe.probe_cached(tmp_path)
    assert not verdict.ran and "root" in verdict.not_run and not verdict.trials


def test_a_container_is_driven_by_the_runtime_that_made_it(tmp_path: Path) -> None:
    crun = _script(tmp_path / "crun", "exit 0\n")
    root = tmp_path / "root"
    made = runtime_of(root, {CONFIG_KEY: crun})
    assert (made.binary, made.name, made.state_dir) == (crun, "crun", root / "run" / "crun")
    assert made.argv("state", "c1") == [crun, "--root", str(root / "run" / "crun"), "state", "c1"]
    old = runtime_of(root, {}) if _has("runc") else None
    if old is not None:  # made before the runtime was recorded: runc's
        assert old.name == "runc" and old.state_dir == root / "run" / "runc"
    if _has("crun"):  # recorded path gone (moved by an upgrade): found again by name
        moved = runtime_of(root, {CONFIG_KEY: "/nonexistent/crun"})
        assert moved.name == "crun" and moved.binary != "/nonexistent/crun"


def _has(name: str) -> bool:
    return shutil.which(name) is not None


def test_update_passes_the_resources_as_a_file(tmp_path: Path) -> None:
    """crun reads `update --resources` only from a path (runc also from -): a file works for both."""
    log = tmp_path / "args"
    fake = _script(tmp_path / "crun", f'echo "$@" > {log}; cat "$5" >> {log}\n')
    OciRuntime(tmp_path / "state", fake).update("c1", {"pids": {"limit": 50}})
    args, resources = log.read_text().splitlines()
    assert args.split()[:4] == ["--root", str(tmp_path / "state"), "update", "--resources"]
    assert args.split()[-1] == "c1" and json.loads(resources) == {"pids": {"limit": 50}}


def test_a_new_container_gets_the_probes_choice_and_keeps_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from virtkit.drivers.base import InstancePaths
    from virtkit.drivers.oci.driver import _oci_runtime

    root = tmp_path / "root"
    paths = InstancePaths.of(root, "c1")
    paths.dir.mkdir(parents=True)
    asked: list[Path] = []
    monkeypatch.setattr(probe, "select_runtime", lambda state_root: asked.append(state_root) or "/x/crun")
    assert _oci_runtime(paths) == "/x/crun" and asked == [root], "new: the probe's choice"
    paths.runtime.write_text(json.dumps({"kind": "container", "argv": [], "config": {CONFIG_KEY: "/y/runc"}}))
    assert _oci_runtime(paths) == "/y/runc" and len(asked) == 1, "made: kept, even if the choice changed"
    if _has("runc"):
        paths.runtime.write_text(json.dumps({"kind": "container", "argv": [], "config": {}}))
        assert _oci_runtime(paths) == shutil.which("runc"), "made before the choice was recorded: runc"


@pytest.mark.skipif(shutil.which("conmon") is None, reason="needs conmon")
def test_conmon_is_given_the_containers_own_runtime(tmp_path: Path) -> None:
    from virtkit.drivers.oci.monitor import MonitorFiles, conmon_argv

    crun = _script(tmp_path / "crun", "exit 0\n")
    runtime = runtime_of(tmp_path / "root", {CONFIG_KEY: crun})
    argv = conmon_argv("c1.1234", "c1", MonitorFiles(tmp_path / "bundle", tmp_path / "console.log"), runtime)
    assert argv[argv.index("-r") + 1] == crun
    root_at = argv.index("--root")
    assert argv[root_at + 2] == str(tmp_path / "root" / "run" / "crun")


def test_a_known_binary_is_not_asked_its_version_again(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    runc = _script(tmp_path / "runc", f'echo called >> {calls}; echo "runc version 1.1.5+ds1"\n')
    first = probe.find_candidates({"runc": runc}.get)
    path = tmp_path / "oci-runtime.json"
    key = cache_key(first, kernel="k", cgroups=LAYOUT)
    assert write_cache(path, key, _verdict())
    known = probe.known_versions(probe.load_cache(path))
    assert list(known.values()) == ["runc version 1.1.5+ds1"]
    again = probe.find_candidates({"runc": runc}.get, known=known)
    assert again == first and calls.read_text().count("called") == 1, "identical binary: version reused"
    stat = os.stat(runc)
    os.utime(runc, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    changed = probe.find_candidates({"runc": runc}.get, known=known)
    assert calls.read_text().count("called") == 2 and cache_key(changed, kernel="k", cgroups=LAYOUT) != key
    assert probe.known_versions({"key": {"runtimes": [{"path": "/r", "inode": "1"}, 7]}}) == {}
    assert probe.known_versions(None) == {}


def test_the_test_rootfs_needs_a_static_busybox(tmp_path: Path) -> None:
    with pytest.raises(HostCapabilityError, match="No such file") as missing:
        probe._busybox(tmp_path / "busybox")
    assert missing.value.hint == "apt-get install busybox-static"
    script = Path(_script(tmp_path / "busybox", "exit 0\n"))
    with pytest.raises(HostCapabilityError, match="not a static busybox"):
        probe._busybox(script)
    if probe.HOST_BUSYBOX.is_file():
        assert probe._busybox() == probe.HOST_BUSYBOX


def test_check_host_wires_the_cached_oci_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from virtkit.ops import host as ops_host

    seen: dict[str, object] = {}
    monkeypatch.setattr(ops_host, "run_checks", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(probe, "probe_cached", lambda where: _verdict() if where == tmp_path else None)
    ops_host.check_host(tmp_path, probe_kvm=False)
    oci_probe = seen["oci_probe"]
    assert callable(oci_probe) and oci_probe() == _verdict()
    ops_host.check_host(tmp_path, probe_kvm=False, probe_oci=False)
    assert seen["oci_probe"] is None
