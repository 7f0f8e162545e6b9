"""ops/metrics.py over the FakeDriver and a real store, and the Prometheus text of api/routes/metrics.py:
what is collected for running and stopped instances, that missing counters stay missing, the exact
exposition text (golden) and its escaping, parsed back line by line."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from virtkit.api.routes.metrics import escape_label, exposition
from virtkit.drivers.base import Stats
from virtkit.drivers.fake import FakeDriver
from virtkit.images.staged import DISK, ROOTFS, StagedImage
from virtkit.model import InstanceKind, InstanceRecord, InstanceState, Nic
from virtkit.ops.images import add_staged
from virtkit.ops.lifecycle import Lifecycle, Request
from virtkit.ops.metrics import (
    HostMetrics,
    InstanceMetrics,
    Metrics,
    NicCounters,
    collect,
    nic_counters,
    read_net_dev,
)
from virtkit.store import SqliteStore

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


@pytest.fixture
def life(root: Path, store: SqliteStore, fake: FakeDriver) -> Lifecycle:
    def make(staging: Path) -> StagedImage:
        (staging / "disk.qcow2").write_bytes(b"disk")
        (staging / "rootfs").mkdir()
        return StagedImage("tiny", ["vm", "container"], "x86_64", "tiny", "t",
                           files={DISK: "disk.qcow2", ROOTFS: "rootfs"})  # fmt: skip

    add_staged(root, store, make, alias="tiny")
    return Lifecycle(root, store, drivers=lambda kind: fake)


NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop ...
    lo: 4818271 396 0 0 0 0 0 0 4818271 396 0 0 0 0 0 0
{device}: {rx} 3 0 0 0 0 0 0 {tx} 12 0 0 0 0 0 0
"""


def net_dev(tmp_path: Path, device: str, rx: int, tx: int) -> Path:
    path = tmp_path / "net_dev"
    path.write_text(NET_DEV.format(device=device, rx=rx, tx=tx))
    return path


def with_nic(store: SqliteStore, name: str, device: str) -> InstanceRecord:
    record = store.get(InstanceRecord, name)
    nic = Nic(network="lan", mac="52:54:00:00:00:01", ip="10.0.0.2", device=device)
    return store.put(record.model_copy(update={"nics": [nic]}))


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, dict[str, str], float]]]:
    """(family -> (type, help), samples), checking the format's rules on the way."""
    meta: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, said = line[7:].partition(" ")
            assert name not in helps, f"two HELP lines for {name}"
            helps[name] = said
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge") and name in helps and name not in meta
            meta[name] = (kind, helps[name])
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels: dict[str, str] = {}
            given = match.group("labels") or ""
            position = 0
            while position < len(given):
                label = LABEL.match(given, position)
                assert label, f"bad labels in {line!r}"
                unescaped = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), label.group(2))
                labels[label.group(1)] = unescaped
                position = label.end()
            assert match.group("name") in meta, f"sample before its TYPE line: {line!r}"
            if meta[match.group("name")][0] == "counter":
                assert match.group("name").endswith("_total")
            samples.append((match.group("name"), labels, float(match.group("value"))))
    return meta, samples


def value(samples: list[tuple[str, dict[str, str], float]], family: str, /, **labels: str) -> float | None:
    found = [v for n, have, v in samples if n == family and all(have.get(k) == x for k, x in labels.items())]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_running_instances_have_their_counters_and_stopped_ones_none(
    life: Lifecycle, root: Path, store: SqliteStore, fake: FakeDriver, tmp_path: Path
) -> None:
    web, _ = life.launch(Request(image="tiny", name="web1", kind=InstanceKind.VM))
    box, _ = life.launch(Request(image="tiny", name="box1", kind=InstanceKind.CONTAINER))
    life.create(Request(image="tiny", name="idle", kind=InstanceKind.VM))
    fake.counters[web.uuid] = Stats(cpu_seconds=1.5, memory_bytes=300 << 20, disk_read_bytes=4096,
                                    disk_write_bytes=512)  # fmt: skip
    fake.counters[box.uuid] = Stats(cpu_seconds=0.25, memory_bytes=2 << 20)  # no disk counters there
    with_nic(store, "web1", "vk0000aaaan0")
    net = net_dev(tmp_path, "vk0000aaaan0", rx=111, tx=2222)
    life.pause("box1")

    metrics = collect(root, store, drivers=lambda kind: fake, net_dev=net)
    by_name = {instance.name: instance for instance in metrics.instances}
    assert [i.name for i in metrics.instances] == ["box1", "idle", "web1"]
    assert by_name["web1"].state is InstanceState.RUNNING and by_name["web1"].kind == "vm"
    assert by_name["web1"].stats == fake.counters[web.uuid]
    # the host side transmits what the instance receives
    assert by_name["web1"].nics == (NicCounters("vk0000aaaan0", received=2222, transmitted=111),)
    assert by_name["box1"].state is InstanceState.PAUSED and by_name["box1"].kind == "container"
    assert by_name["box1"].stats.disk_read_bytes is None
    assert by_name["idle"].state is InstanceState.STOPPED and by_name["idle"].stats == Stats()
    assert fake.calls.count("stats") == 2  # never asked of a stopped instance
    assert metrics.host.instances[InstanceState.RUNNING] == 1
    assert metrics.host.instances[InstanceState.PAUSED] == 1
    assert metrics.host.instances[InstanceState.STOPPED] == 1
    assert metrics.host.instances[InstanceState.ERROR] == 0
    assert metrics.host.cpus >= 1 and metrics.host.memory_total > 0

    _meta, samples = parse(exposition(metrics))
    assert value(samples, "virtkit_instance_cpu_seconds_total", name="web1", kind="vm") == 1.5
    assert value(samples, "virtkit_instance_memory_bytes", name="box1", kind="container") == 2 << 20
    assert value(samples, "virtkit_instance_disk_read_bytes_total", name="box1") is None
    assert value(samples, "virtkit_instance_disk_write_bytes_total", name="web1") == 512
    assert value(samples, "virtkit_instance_network_receive_bytes_total", name="web1",
                 device="vk0000aaaan0") == 2222  # fmt: skip
    assert value(samples, "virtkit_instance_state", name="idle", state="stopped") == 1
    assert value(samples, "virtkit_instance_state", name="idle", state="running") is None  # only its own
    assert value(samples, "virtkit_instance_cpu_seconds_total", name="idle") is None
    assert value(samples, "virtkit_host_instances", state="paused") == 1


def test_a_driver_that_fails_costs_the_counters_not_the_collection(
    life: Lifecycle, root: Path, store: SqliteStore, fake: FakeDriver, tmp_path: Path
) -> None:
    web, _ = life.launch(Request(image="tiny", name="web1", kind=InstanceKind.VM))
    fake.counters[web.uuid] = Stats(cpu_seconds=9.0)
    with_nic(store, "web1", "vk0000bbbbn0")  # a device the host does not have
    fake.fail_on.add("stats")
    metrics = collect(root, store, drivers=lambda kind: fake, net_dev=tmp_path / "none")
    (only,) = metrics.instances
    assert only.state is InstanceState.RUNNING and only.stats == Stats()
    assert only.nics == (NicCounters("vk0000bbbbn0"),)
    _meta, samples = parse(exposition(metrics))
    assert value(samples, "virtkit_instance_state", name="web1", state="running") == 1
    assert not [s for s in samples if s[0].startswith("virtkit_instance_network")]


def test_nic_counters_from_proc_net_dev(tmp_path: Path) -> None:
    host = read_net_dev(net_dev(tmp_path, "vk12345678n0", rx=5, tx=7).read_text())
    assert host == {"lo": (4818271, 4818271), "vk12345678n0": (5, 7)}
    assert nic_counters("vk12345678n0", host) == NicCounters("vk12345678n0", received=7, transmitted=5)
    assert nic_counters("vk00000000n0", host) == NicCounters("vk00000000n0")
    assert read_net_dev("garbage\n\n eth0: x y\n") == {}


GOLDEN_INSTANCES = (
    InstanceMetrics("web1", "vm", InstanceState.RUNNING,
                    Stats(cpu_seconds=12.5, memory_bytes=268435456, disk_read_bytes=1048576,
                          disk_write_bytes=4096),
                    (NicCounters("vk0a0b0c0dn0", received=1500, transmitted=900),)),
    InstanceMetrics('we"ird\\na\nme', "container", InstanceState.STOPPED),
)  # fmt: skip
GOLDEN_HOST = HostMetrics(2, 25769803776, 21474836480, {state: 0 for state in InstanceState}
                          | {InstanceState.RUNNING: 1, InstanceState.STOPPED: 1})  # fmt: skip

GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"  # UPDATE_GOLDEN=1 rewrites it


def test_exposition_golden() -> None:
    text = exposition(Metrics(GOLDEN_HOST, GOLDEN_INSTANCES, 0.003))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    meta, samples = parse(text)
    assert meta["virtkit_instance_cpu_seconds_total"][0] == "counter"
    assert meta["virtkit_host_memory_bytes"][0] == "gauge"
    # the escaped name comes back whole
    assert value(samples, "virtkit_instance_state", name='we"ird\\na\nme', state="stopped") == 1


def test_label_escaping() -> None:
    assert escape_label('a"b') == 'a\\"b'
    assert escape_label("a\\b") == "a\\\\b"
    assert escape_label("a\nb") == "a\\nb"
    assert escape_label("plain-name_1") == "plain-name_1"


def test_no_instances_still_gives_every_family() -> None:
    host = HostMetrics(1, 1 << 30, None, {state: 0 for state in InstanceState})
    meta, samples = parse(exposition(Metrics(host, (), 0.0)))
    assert "virtkit_instance_cpu_seconds_total" in meta and "virtkit_instance_state" in meta
    assert value(samples, "virtkit_host_memory_available_bytes") is None  # not known: not made up
    assert value(samples, "virtkit_host_memory_bytes") == 1 << 30
