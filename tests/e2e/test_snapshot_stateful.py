"""Stateful VM snapshots and snapshot expiry as a user types them: a counter running in the guest
(on its tmpfs /tmp: only RAM holds it) carries on from the snapshot's value after a restore into
the running VM (same QEMU) and after one of the stopped VM (QEMU started paused, state loaded);
what cannot be saved is refused clearly; `snapshot prune` deletes what expired, for real."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_snapshot_cli import ok, run_in
from tests.e2e.test_vm_lifecycle import state_of, tiny  # noqa: F401  (the fixture)

COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done >/dev/null 2>&1 </dev/null &"
SLACK = 10  # ticks of 0.2 s the guest may make between a restore and the next read (TCG, busy host)


def counter(virtkit: Cli, name: str) -> int:
    return int(run_in(virtkit, name, "cat /tmp/counter").strip() or 0)


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:g} s"
        time.sleep(0.2)


def test_a_stateful_snapshot_resumes_a_running_counter(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny("launch", "tiny", "v1", "--vm", "--wait", timeout=180))
    assert run_in(tiny, "v1", "grep ' /tmp ' /proc/mounts").startswith("tmpfs /tmp tmpfs")
    run_in(tiny, "v1", COUNTER)
    wait_for(lambda: counter(tiny, "v1") >= 5)
    before = counter(tiny, "v1")
    created = ok(tiny("snapshot", "create", "v1", "live", "--stateful"))
    after = counter(tiny, "v1")
    assert created.startswith("Snapshot live of v1 created") and "with its memory state" in created
    assert "power cut" not in created
    wait_for(lambda: counter(tiny, "v1") >= after + 15)
    pid = state_of(tiny, "v1")["pid"]

    # Into the running VM: the same QEMU, the guest put back where it was.
    restored = ok(tiny("snapshot", "restore", "v1", "live"))
    assert restored.startswith("Instance v1 (was running) resumed at snapshot live")
    back = counter(tiny, "v1")
    assert before <= back <= after + SLACK, (before, after, back)  # not 0, not where it had got to
    wait_for(lambda: counter(tiny, "v1") > back)  # and the loop runs on
    shown = state_of(tiny, "v1")
    assert (shown["state"], shown["pid"]) == ("running", pid)

    # Into the stopped VM: QEMU starts with its vCPUs stopped, the state is loaded, then they run.
    ok(tiny("stop", "--force", "v1", timeout=60))
    restored = ok(tiny("snapshot", "restore", "v1", "live", timeout=120))
    assert restored.startswith("Instance v1 (was stopped) resumed at snapshot live")
    back = counter(tiny, "v1")
    assert before <= back <= after + SLACK, (before, after, back)
    wait_for(lambda: counter(tiny, "v1") > back)
    shown = state_of(tiny, "v1")
    assert shown["state"] == "running" and shown["pid"] != pid

    listed = json.loads(ok(tiny("snapshot", "list", "v1", "--json")))
    assert [(s["name"], s["stateful"], s["live"], s["disks"]) for s in listed] == [
        ("live", True, True, ["root.qcow2"])
    ]
    shown_snap = ok(tiny("snapshot", "show", "v1", "live"))
    assert "memory and device state too" in shown_snap and "with the memory state" in shown_snap
    ok(tiny("stop", "--force", "v1", timeout=60))
    assert_clear_error(tiny("snapshot", "create", "v1", "cold", "--stateful"), 1, "'v1' is stopped")
    ok(tiny("snapshot", "delete", "v1", "live"))
    assert json.loads(ok(tiny("snapshot", "list", "v1", "--json"))) == []


def test_prune_deletes_what_expired(tiny: Cli, state_root: Path) -> None:  # noqa: F811
    ok(tiny("create", "tiny", "c1", "--container"))
    created = ok(tiny("snapshot", "create", "c1", "brief", "--expiry", "1s"))
    assert created.startswith("Snapshot brief of c1 created") and ", expires " in created
    ok(tiny("snapshot", "create", "c1", "kept"))
    table = ok(tiny("snapshot", "list", "c1")).splitlines()
    assert "EXPIRES" in table[0] and table[2].split()[-1] == "never"
    said = ok(tiny("set", "c1", "snapshots.schedule=@hourly", "snapshots.expiry=7d"))
    assert said == "Instance c1: snapshots.schedule=@hourly, snapshots.expiry=7d (now).\n"
    time.sleep(1.1)  # past brief's expiry
    pruned = ok(tiny("snapshot", "prune", "--all"))
    assert "Snapshot brief of c1 deleted (expired " in pruned
    assert "c1: next scheduled snapshot at " in pruned  # set a moment ago: none is due before the hour
    assert [s["name"] for s in json.loads(ok(tiny("snapshot", "list", "c1", "--json")))] == ["kept"]
    (result,) = json.loads(ok(tiny("snapshot", "prune", "c1", "--json")))
    assert (result["created"], result["deleted"], result["error"]) == ([], [], None)
    assert time.time() < result["next_at"] <= time.time() + 3600
