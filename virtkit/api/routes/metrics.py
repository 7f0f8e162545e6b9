"""`GET /metrics`: the instances' and the host's counters in Prometheus' text exposition format
(version 0.0.4), for a viewer token (or the local socket).

    # HELP virtkit_instance_cpu_seconds_total CPU time used by the instance ...
    # TYPE virtkit_instance_cpu_seconds_total counter
    virtkit_instance_cpu_seconds_total{name="c1",kind="container"} 1.25

Every family has its HELP and TYPE lines, even when no instance has a sample in it; label values
are escaped as the format says (backslash, double quote, newline). What ops/metrics.py could not
count has no sample: a missing series, never a made-up 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from virtkit.api.context import VIEWER, ApiContext
from virtkit.ops.metrics import InstanceMetrics, Metrics, collect

router = APIRouter(tags=["metrics"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
Sample = tuple[Labels, float | int]


@dataclass(frozen=True)
class Family:
    name: str
    type: str  # "counter" or "gauge"
    help: str
    samples: list[Sample]


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float | int) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render(families: list[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for labels, value in family.samples:
            inner = ",".join(f'{key}="{escape_label(text)}"' for key, text in labels)
            series = f"{family.name}{{{inner}}}" if inner else family.name
            lines.append(f"{series} {number(value)}")
    return "\n".join(lines) + "\n"


def _ident(instance: InstanceMetrics) -> Labels:
    return (("name", instance.name), ("kind", instance.kind))


def _per_instance(metrics: Metrics, attribute: str) -> list[Sample]:
    samples: list[Sample] = []
    for instance in metrics.instances:
        value = getattr(instance.stats, attribute)
        if value is not None:
            samples.append((_ident(instance), value))
    return samples


def _per_nic(metrics: Metrics, attribute: str) -> list[Sample]:
    samples: list[Sample] = []
    for instance in metrics.instances:
        for nic in instance.nics:
            value = getattr(nic, attribute)
            if value is not None:
                samples.append(((*_ident(instance), ("device", nic.device)), value))
    return samples


def _states(metrics: Metrics) -> list[Sample]:
    """One sample per instance, its live state's (all six states at 0/1 would be six times the text
    for a thousand instances; `virtkit_host_instances` has every state's count)."""
    return [((*_ident(instance), ("state", instance.state.value)), 1) for instance in metrics.instances]


def families(metrics: Metrics) -> list[Family]:
    """The metric families of one collection, in a fixed order."""
    host = metrics.host
    counted: list[tuple[str, str, str, str]] = [
        ("virtkit_instance_cpu_seconds_total", "counter", "cpu_seconds",
         "CPU time used by the instance's processes (a VM: its QEMU), in seconds."),
        ("virtkit_instance_memory_bytes", "gauge", "memory_bytes",
         "Memory the instance uses now (its cgroup's usage), in bytes."),
        ("virtkit_instance_disk_read_bytes_total", "counter", "disk_read_bytes",
         "Bytes the instance read from its disks (a VM: QEMU's block accounting; a container: block I/O)."),
        ("virtkit_instance_disk_write_bytes_total", "counter", "disk_write_bytes",
         "Bytes the instance wrote to its disks (a VM: QEMU's block accounting; a container: block I/O)."),
    ]  # fmt: skip
    found = [
        Family("virtkit_instance_state", "gauge",
               "The instance's live state (the sample's state label; always 1).", _states(metrics)),
        *(Family(name, kind, text, _per_instance(metrics, key)) for name, kind, key, text in counted),
        Family("virtkit_instance_network_receive_bytes_total", "counter",
               "Bytes the instance received on a NIC (what its host-side device sent).",
               _per_nic(metrics, "received")),
        Family("virtkit_instance_network_transmit_bytes_total", "counter",
               "Bytes the instance sent on a NIC (what its host-side device received).",
               _per_nic(metrics, "transmitted")),
        Family("virtkit_host_cpus", "gauge", "CPUs of the host.", [((), host.cpus)]),
        Family("virtkit_host_memory_bytes", "gauge", "Memory of the host, in bytes.",
               [((), host.memory_total)]),
        Family("virtkit_host_memory_available_bytes", "gauge",
               "Memory the host can still give without swapping (MemAvailable), in bytes.",
               [] if host.memory_available is None else [((), host.memory_available)]),
        Family("virtkit_host_instances", "gauge", "Instances defined on this host, by live state.",
               [((("state", state.value),), count) for state, count in host.instances.items()]),
        Family("virtkit_metrics_collect_seconds", "gauge", "How long collecting these metrics took.",
               [((), metrics.seconds)]),
    ]  # fmt: skip
    return found


def exposition(metrics: Metrics) -> str:
    return render(families(metrics))


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(ctx: ApiContext = VIEWER) -> PlainTextResponse:
    """Every instance's state, CPU time, memory, disk and network bytes, and the host's totals,
    in Prometheus text format."""
    return PlainTextResponse(exposition(collect(ctx.root, ctx.store)), media_type=CONTENT_TYPE)
