"""Bulk verbs as a user types them: `virtkit stop|start|restart|delete NAME... | --all |
--label KEY=VALUE`, in parallel, one line per instance and a summary; one failure does not stop
the rest and the exit code says some failed; a bad selection does nothing."""

from __future__ import annotations

import json

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import tiny  # noqa: F401  (the fixture)


def ok(cli: Cli, *args: str) -> str:
    done = cli(*args, timeout=180)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def states(cli: Cli) -> dict[str, str]:
    return {i["name"]: i["state"] for i in json.loads(ok(cli, "list", "--json"))}


def test_by_label_all_and_names(tiny: Cli) -> None:  # noqa: F811
    for name, tier in (("w1", "web"), ("w2", "web"), ("d1", "db")):
        ok(tiny, "launch", "tiny", name, "--container", "--memory", "64MiB", "--label", f"tier={tier}")
    assert json.loads(ok(tiny, "show", "w1", "--json"))["labels"] == {"tier": "web"}

    out = ok(tiny, "stop", "--label", "tier=web")
    assert sorted(out.splitlines()[:-1]) == ["Instance w1 stopped.", "Instance w2 stopped."]
    assert out.splitlines()[-1] == "2 stopped, 0 failed."
    assert states(tiny) == {"w1": "stopped", "w2": "stopped", "d1": "running"}

    # w1 is stopped already: it fails, d1 is stopped all the same, and the exit code says so.
    done = tiny("stop", "w1", "d1", timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Instance d1 stopped." in done.stdout and "1 stopped, 1 failed." in done.stdout
    assert "Error: w1: instance 'w1' is already stopped" in done.stderr
    assert states(tiny)["d1"] == "stopped"

    out = ok(tiny, "start", "--all")
    assert out.splitlines()[-1] == "3 started, 0 failed."
    assert set(states(tiny).values()) == {"running"}
    report = json.loads(ok(tiny, "restart", "--label", "tier=db", "--json"))
    assert [r["name"] for r in report["done"]] == ["d1"] and report["failed"] == []
    assert ok(tiny, "stop", "--label", "tier=none") == "No instances match.\n"

    out = ok(tiny, "delete", "--all", "--force")
    assert out.splitlines()[-1] == "3 deleted, 0 failed."
    assert states(tiny) == {}


def test_a_bad_selection_does_nothing(tiny: Cli) -> None:  # noqa: F811
    ok(tiny, "launch", "tiny", "c1", "--container", "--memory", "64MiB")
    assert_clear_error(tiny("stop"), 2, "name the instances, or give --all or --label")
    assert_clear_error(tiny("stop", "c1", "--all"), 2, "one of them")
    assert_clear_error(tiny("stop", "--label", "tier"), 2, "invalid --label 'tier'")
    assert_clear_error(tiny("stop", "c1", "nope"), 1, "instance 'nope' not found")
    assert_clear_error(tiny("stop", "c1", "Bad_Name"), 2, "invalid instance name")
    assert_clear_error(tiny("launch", "tiny", "c2", "--label", "virtkit.stack=x"), 2, "virtkit's own")
    assert states(tiny) == {"c1": "running"}
