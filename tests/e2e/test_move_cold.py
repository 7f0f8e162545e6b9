"""`virtkit move NAME --to REMOTE` (cold) and `virtkit copy NAME REMOTE:NEW` as a user types them,
between two hosts of the lab topology (tests/fixtures/hosts.py): data, MACs and addresses kept,
the source removed only once the destination runs it, and every failure leaving both hosts as
they were."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import VIRTKIT, tiny_template  # noqa: F401  (the fixture)
from tests.fixtures.hosts import Host, Hosts, hosts  # noqa: F401  (the fixture)
from virtkit.api.streams import Streams
from virtkit.errors import SpecError

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")]

SUBNET = "10.89.0.0/24"
WRITE = "head -c {size} /dev/urandom > /root/data; sync; sha256sum /root/data"


@pytest.fixture
def pair(hosts: Hosts, tmp_path: Path) -> Iterator[tuple[Host, Host, Path]]:  # noqa: F811
    """Hosts a and b, both with network `lan`, and a CLI config on a that knows b as remote `b`."""
    a, b = hosts(2)
    config = tmp_path / "config"
    done = on(a, config, "remote", "add", "b", b.url, "--token", b.token, "--certificate", str(b.cert))
    assert done.returncode == 0, done.stderr
    for host in (a, b):
        host.ok("network", "create", "lan", "--subnet", SUBNET)
    yield a, b, config


def on(host: Host, config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return host.virtkit(*args, timeout=timeout, env={"VIRTKIT_CONFIG_DIR": str(config)})


def show(host: Host, name: str) -> dict[str, object]:
    return dict(json.loads(host.ok("show", name, "--json")))


def names(host: Host) -> list[str]:
    return sorted(i["name"] for i in json.loads(host.ok("list", "--json")))


def world(host: Host) -> tuple[object, ...]:
    """What a failed move must leave as it was: instances and their states, images, networks."""
    listed = json.loads(host.ok("list", "--json"))
    images = sorted(i["fingerprint"] for i in json.loads(host.ok("image", "list", "--json")))
    networks = sorted(n["name"] for n in json.loads(host.ok("network", "list", "--json")))
    return sorted((i["name"], i["state"], i["uuid"]) for i in listed), images, networks


def nic(record: dict[str, object]) -> tuple[str, str, str]:
    first = record["nics"][0]  # type: ignore[index]
    return first["network"], first["mac"], first["ip"]


def exec_retry(host: Host, name: str, *command: str, timeout: float = 120) -> str:
    """`virtkit exec` once the instance answers (a VM's guest agent comes up after it runs)."""
    deadline = time.monotonic() + timeout
    while True:
        done = host.virtkit("exec", name, "--", *command, timeout=120)
        if done.returncode == 0 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr
            return done.stdout
        time.sleep(1)


@pytest.mark.parametrize("kind", ["--container", "--vm"])
def test_a_running_instance_moves_cold_with_its_data_and_identity(
    pair: tuple[Host, Host, Path], kind: str
) -> None:
    a, b, config = pair
    a.ok("launch", "tiny", "m1", kind, "--network", "lan", "--wait", timeout=300)
    digest = a.ok("exec", "m1", "--", "sh", "-c", WRITE.format(size=3_000_000))
    before = show(a, "m1")
    done = on(a, config, "move", "m1", "--to", "b", "--json")
    assert done.returncode == 0, done.stderr
    moved = json.loads(done.stdout)
    assert moved["was_running"] and moved["downtime_s"] > 0
    if kind == "--container":  # pre-copied while it ran: only the difference once stopped
        assert moved["precopy_bytes"] > 3_000_000 and moved["bytes"] < 1_000_000, moved
        assert list(moved["phases"]) == ["precopy", "stop", "transfer", "start", "remove"], moved
        assert json.loads(b.ok("snapshot", "list", "m1", "--json")) == []  # its snapshot gone there
    else:
        assert moved["bytes"] > 3_000_000 and moved["precopy_bytes"] == 0
    assert moved["total_s"] >= moved["downtime_s"]
    assert names(a) == [] and not (a.root / "instances" / "m1").exists()
    after = show(b, "m1")
    assert after["state"] == "running" and after["uuid"] == before["uuid"]
    assert nic(after) == nic(before)
    assert exec_retry(b, "m1", "sha256sum", "/root/data") == digest
    assert a.ok("network", "show", "lan", "--json")  # the network stays on a


def test_a_stopped_instance_moves_and_stays_stopped_and_the_text_says_so(
    pair: tuple[Host, Host, Path],
) -> None:
    a, b, config = pair
    a.ok("create", "tiny", "s1", "--container", "--network", "lan")
    done = on(a, config, "move", "s1", "--to", "b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Instance s1 moved to b in ") and "stays stopped" in done.stdout
    assert names(a) == [] and show(b, "s1")["state"] == "stopped"
    b.ok("start", "s1", timeout=120)
    assert show(b, "s1")["state"] == "running"


def test_a_running_container_asked_to_move_live_moves_cold_and_says_why(
    pair: tuple[Host, Host, Path],
) -> None:
    """l1 is a linked clone (on the layer its template's data was frozen into): it is carried with
    the whole tree under it, and rests on that alone there."""
    a, b, config = pair
    a.ok("launch", "tiny", "tmpl", "--container", "--network", "lan", "--wait", timeout=120)
    digest = a.ok("exec", "tmpl", "--", "sh", "-c", WRITE.format(size=1_000_000))
    a.ok("stop", "tmpl", timeout=60)
    a.ok("copy", "tmpl", "l1")
    a.ok("start", "l1", "--wait", timeout=120)
    before = show(a, "l1")
    assert before["layers"]
    done = on(a, config, "move", "l1", "--to", "b", "--live")
    assert done.returncode == 0, done.stderr
    assert "Note: a container moves live only with CRIU" in done.stderr and "moving it cold" in done.stderr
    assert done.stdout.startswith("Instance l1 moved to b in ") and "downtime" in done.stdout
    after = show(b, "l1")
    assert names(a) == ["tmpl"] and after["state"] == "running" and after["uuid"] == before["uuid"]
    assert after["layers"] == [] and after["base"] == "own"
    assert exec_retry(b, "l1", "sha256sum", "/root/data") == digest


def test_a_copy_to_a_remote_is_a_new_instance_and_the_source_runs_on(pair: tuple[Host, Host, Path]) -> None:
    a, b, config = pair
    a.ok("launch", "tiny", "c1", "--container", "--network", "lan", "--wait", timeout=120)
    digest = a.ok("exec", "c1", "--", "sh", "-c", WRITE.format(size=1_000_000))
    done = on(a, config, "copy", "c1", "b:c2")
    assert done.returncode == 0, done.stderr
    assert "Instance b:c2 created as a copy of c1" in done.stdout
    source, copy = show(a, "c1"), show(b, "c2")
    assert source["state"] == "running" and copy["state"] == "stopped"
    assert copy["uuid"] != source["uuid"] and nic(copy)[1] != nic(source)[1] and nic(copy)[0] == "lan"
    b.ok("start", "c2", timeout=120)
    assert b.ok("exec", "c2", "--", "sha256sum", "/root/data") == digest
    a.ok("snapshot", "create", "c1", "s0")
    a.ok("exec", "c1", "--", "sh", "-c", "echo changed > /root/data")  # independent of each other
    assert b.ok("exec", "c2", "--", "sha256sum", "/root/data") == digest
    done = on(a, config, "copy", "c1", "b:c3", "--snapshot", "s0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(b.ok("snapshot", "list", "c3", "--json")) == []
    b.ok("start", "c3", timeout=120)
    assert b.ok("exec", "c3", "--", "sha256sum", "/root/data") == digest  # the snapshot's state
    assert a.ok("exec", "c1", "--", "cat", "/root/data").strip() == "changed"
    for bad, said in (
        (["copy", "c1", "b:c2"], "exists on b"),
        (["copy", "c1", "b:c3", "--full"], "full copy"),
        (["--remote", "b", "copy", "c2", "nowhere:c4"], "not supported"),
    ):
        refused = on(a, config, *bad)
        assert refused.returncode != 0 and said in refused.stderr and "Traceback" not in refused.stderr, bad


def test_refused_moves_leave_both_hosts_unchanged(pair: tuple[Host, Host, Path]) -> None:
    a, b, config = pair
    a.ok("launch", "tiny", "r1", "--container", "--network", "lan", "--wait", timeout=120)
    a.ok("network", "create", "only-here", "--subnet", "10.90.0.0/24")
    a.ok("launch", "tiny", "r2", "--container", "--network", "only-here", "--wait", timeout=120)
    b.ok("create", "tiny", "r1", "--container")
    seen = world(a), world(b)
    for bad, said in (
        (["move", "r1", "--to", "nowhere"], "remote 'nowhere' not found"),
        (["move", "nope", "--to", "b"], "not found"),
        (["move", "r1", "--to", "b"], "exists on b already"),
        (["move", "r2", "--to", "b"], "network 'only-here'"),
        (["move", "r2", "--to", "b", "--target-network", "lan=x"], "no NIC on network 'lan'"),
        (["move", "r2", "--to", "b", "--target-network", "missing"], "network 'missing'"),
        (["move", "r2", "--to", "b", "--target-pool", "nopool"], "pool 'nopool'"),
        (["move", "r2", "--to", "local"], "not local"),
    ):
        done = on(a, config, *bad)
        assert done.returncode != 0 and said in done.stderr and "Traceback" not in done.stderr, (
            bad,
            done.stderr,
        )
    with a.inside(), Streams(b.url, token=b.token, certificate=b.cert) as streams:
        for nics, said in (
            (["lan,bogus=1"], "invalid --network"),
            (["lan,mac=01:00:00:00:00:01"], "multicast"),
            (["lan"] * 33, "at most 32"),
            (["../x"], "invalid"),
        ):
            with pytest.raises(SpecError, match=said):
                streams.import_archive(io.BytesIO(b"not read"), "r9", identity=True, nics=nics)
    assert (world(a), world(b)) == seen
    assert not list(a.root.glob("instances/*/move.json"))
    moved = on(a, config, "move", "r2", "--to", "b", "--target-network", "only-here=lan")
    assert moved.returncode == 0, moved.stderr
    assert nic(show(b, "r2"))[0] == "lan" and show(b, "r2")["state"] == "running"


def _started_move(a: Host, config: Path, name: str) -> subprocess.Popen[str]:
    env = {**os.environ, "VIRTKIT_ROOT": str(a.root), "VIRTKIT_CONFIG_DIR": str(config)}
    return subprocess.Popen(a.ns.argv([str(VIRTKIT), "move", name, "--to", "b"]), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _wait_for_upload(b: Host, move: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until the destination has received some of the archive (its upload file under transfers/)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and move.poll() is None:
        for path in b.root.glob("transfers/*/*"):
            try:
                if path.stat().st_size > 1 << 20:
                    return
            except FileNotFoundError:
                continue
        time.sleep(0.01)
    raise AssertionError(f"no upload seen on {b.name}: {move.poll()} {move.stderr and move.stderr.read()}")


def test_the_destination_killed_midway_leaves_the_source_running_and_the_destination_clean(
    pair: tuple[Host, Host, Path],
) -> None:
    a, b, config = pair
    a.ok("launch", "tiny", "k1", "--container", "--network", "lan", "--wait", timeout=120)
    digest = a.ok("exec", "k1", "--", "sh", "-c", WRITE.format(size=150_000_000), timeout=300)
    before = world(b)
    move = _started_move(a, config, "k1")
    _wait_for_upload(b, move)
    assert b.server is not None
    b.server.send_signal(signal.SIGKILL)
    b.server.wait(30)
    _, err = move.communicate(timeout=300)
    print(f"the move said: {err}")
    assert move.returncode != 0 and "Traceback" not in err, err
    assert show(a, "k1")["state"] == "running"
    assert json.loads(a.ok("snapshot", "list", "k1", "--json")) == []  # the pre-copy's snapshot went
    assert a.ok("exec", "k1", "--", "sha256sum", "/root/data") == digest
    assert not (a.root / "instances" / "k1" / "move.json").exists()
    b.start_server()
    assert world(b) == before and not list(b.root.glob("instances/*"))


def _wait_for_phase(
    a: Host, name: str, phase: str, move: subprocess.Popen[str], timeout: float = 180
) -> None:
    journal = a.root / "instances" / name / "move.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and move.poll() is None:
        try:
            if json.loads(journal.read_text())["phase"] == phase:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.002)
    raise AssertionError(f"the move never reached {phase}: {move.poll()}")


@pytest.mark.parametrize(("phase", "recovered"), [("precopy", "resumed"), ("delta", "resumed"),
                                                 ("starting", "moved")])  # fmt: skip
def test_a_rerun_after_the_move_was_killed_completes_it(
    pair: tuple[Host, Host, Path], phase: str, recovered: str
) -> None:
    """Killed while pre-copying (uploading) or sending the difference, the rerun puts it back and
    moves it again; killed once the other host has it all, the rerun completes that move."""
    a, b, config = pair
    a.ok("launch", "tiny", "j1", "--container", "--network", "lan", "--wait", timeout=120)
    digest = a.ok("exec", "j1", "--", "sh", "-c", WRITE.format(size=150_000_000), timeout=300)
    uuid = show(a, "j1")["uuid"]
    move = _started_move(a, config, "j1")
    if phase == "precopy":
        _wait_for_upload(b, move)
    else:
        _wait_for_phase(a, "j1", phase, move)
    move.send_signal(signal.SIGKILL)
    move.communicate(timeout=60)
    journal = json.loads((a.root / "instances" / "j1" / "move.json").read_text())
    assert journal["phase"] == phase and journal["was_running"]
    done = on(a, config, "move", "j1", "--to", "b", "--json")
    assert done.returncode == 0, done.stderr
    print(f"the rerun said: {done.stdout}")
    assert json.loads(done.stdout)["recovered"] == recovered
    assert names(a) == [] and show(b, "j1")["state"] == "running" and show(b, "j1")["uuid"] == uuid
    assert b.ok("exec", "j1", "--", "sha256sum", "/root/data") == digest
    assert json.loads(b.ok("snapshot", "list", "j1", "--json")) == []
