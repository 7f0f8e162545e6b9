"""`virtkit move NAME --to REMOTE --live` as a user types it, between two hosts of the lab
topology (tests/fixtures/hosts.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.conftest import tiny_template  # noqa: F401  (the fixture)
from tests.fixtures.hosts import Host, Hosts, hosts  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")]


def on(host: Host, config: Path, *args: str, timeout: float = 180) -> tuple[int, str, str]:
    done = host.virtkit(*args, timeout=timeout, env={"VIRTKIT_CONFIG_DIR": str(config)})
    return done.returncode, done.stdout, done.stderr


def test_move_live_through_the_cli(hosts: Hosts, tmp_path: Path) -> None:  # noqa: F811
    a, b = hosts(2)
    config = tmp_path / "config"
    code, _, err = on(a, config, "remote", "add", "b", b.url, "--token", b.token,
                      "--certificate", str(b.cert))  # fmt: skip
    assert code == 0, err
    a.ok("launch", "tiny", "v1", "--vm", "--wait", timeout=180)
    a.ok("exec", "v1", "--", "sh", "-c", "echo moved-with-me > /root/mark")

    for bad, said in (
        (["move", "v1", "--to", "nowhere", "--live"], "nowhere"),
        (["move", "nope", "--to", "b", "--live"], "nope"),
        (["move", "v1", "--to", "b", "--live", "--downtime", "0"], "downtime"),
        (["move", "v1", "--to", "b", "--live", "--target-network", "lan"], "HERE=THERE"),
        (["move", "v1", "--to", "b", "--live", "--target-network", "lan=x"], "no NIC on network"),
        (["move", "../x", "--to", "b", "--live"], "invalid"),
    ):
        code, _, err = on(a, config, *bad)
        assert code != 0 and said in err and "Traceback" not in err, (bad, err)
    assert json.loads(a.ok("show", "v1", "--json"))["state"] == "running"
    assert b.ok("list", "--json").strip() == "[]"

    accel = json.loads((a.root / "instances" / "v1" / "runtime.json").read_text())["config"]["accel"]
    code, out, err = on(a, config, "move", "v1", "--to", "b", "--live")
    assert code == 0, err
    assert out.startswith("Instance v1 moved live to b in ") and "guest paused" in out
    assert ("under TCG it is not copied live" in out) == (accel == "tcg"), out
    assert "memory" in err  # progress lines
    assert a.ok("list", "--json").strip() == "[]"
    assert b.ok("exec", "v1", "--", "cat", "/root/mark").strip() == "moved-with-me"

    code, _, err = on(b, config, "move", "v1", "--to", "b", "--live")  # onto itself
    assert code != 0 and "exists on this host already" in err
    assert json.loads(b.ok("show", "v1", "--json"))["state"] == "running"
    assert not (b.root / "instances" / "v1" / "migration.json").exists()
