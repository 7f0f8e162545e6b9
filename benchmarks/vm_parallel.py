"""Ten tiny VMs launched at once through virtkit, against ten copies of the identical QEMU command.

Run: .venv/bin/python benchmarks/vm_parallel.py [--count N] [--memory SIZE]
All in a temporary state root (the tiny image is built there; the download cache makes it quick):
- virtkit: N `virtkit launch tiny vmN --vm --wait` processes started together, timed until the last
  returns; each VM's boot phases from `virtkit show vmN --json` (spawn, kernel, ready: seconds from
  QEMU's start), with `began` (QEMU's start from the batch start: CLI start-up, overlay, store) and
  `after` (from the guest's readiness to the CLI's exit);
- raw: N fresh instances made with `virtkit create` (untimed: each has its own pidfile, sockets and
  disk overlay), their saved argv (`show rN --runtime --json`) started together by hand, timed until
  every guest has written VIRTKIT-READY to its readiness port;
- memory, per VM once all are ready: QEMU's RSS minus the RSS of the anonymous mapping backing guest
  RAM (the one whose size is the VM's memory), both from one read of /proc/PID/smaps; `priv` does the
  same with private RSS (without pages shared with the other QEMUs: binary, libraries, kernel file);
- CPU, per batch until all are ready: the host's busy CPU-seconds split into our QEMUs, the tool
  driving them (the virtkit CLIs, or this script's polling) and other work on the host (noise).
Everything made is removed on the way out, Ctrl-C and SIGTERM included. Exits 1 if a VM failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

VIRTKIT = Path(sys.executable).parent / "virtkit"
MARKER = b"VIRTKIT-READY"
TIMEOUT = 300.0  # seconds for a whole batch to be ready; ten TCG guests share two cores
POLL = 0.005
KIB = 1024
TICK = os.sysconf("SC_CLK_TCK")
PHASES = ("began", "spawn", "kernel", "ready", "after")
Check = Callable[[], "bool | str"]  # False: not yet; True: ready; a text: failed, and why


@dataclass
class Result:
    name: str
    ready_s: float | None = None  # from the batch start to readiness (raw) or the CLI's exit (virtkit)
    phases: dict[str, float] = field(default_factory=dict)
    rss_kib: int | None = None
    guest_rss_kib: int | None = None
    private_kib: int | None = None  # Private_Clean + Private_Dirty: not shared with the other QEMUs
    cgroup: str | None = None  # QEMU's cpu cgroup
    error: str | None = None

    def overhead_mib(self, total: str = "rss_kib") -> float | None:
        kib = getattr(self, total)
        return None if kib is None or self.guest_rss_kib is None else (kib - self.guest_rss_kib) / KIB

    def probe(self, pid: int, guest_bytes: int) -> None:
        self.rss_kib, self.private_kib, self.guest_rss_kib = smaps_memory(pid, guest_bytes)
        self.cgroup = cpu_cgroup(pid)


@dataclass
class Batch:
    results: list[Result]
    cpu: dict[str, float]

    @property
    def total_s(self) -> float | None:
        times = [r.ready_s for r in self.results if r.ready_s is not None]
        return max(times) if times and len(times) == len(self.results) else None

    def mean_overhead_mib(self, total: str = "rss_kib") -> float | None:
        values = [v for r in self.results if (v := r.overhead_mib(total)) is not None]
        return statistics.mean(values) if values else None


def vk(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(VIRTKIT), "--root", str(root), *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True)


def show(root: Path, name: str, *flags: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(vk(root, "show", name, *flags, "--json").stdout)
    return doc


def read(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return ""


def smaps_memory(pid: int, guest_bytes: int) -> tuple[int, int, int]:
    """(RSS, private RSS, RSS of the guest-RAM mapping) in KiB, from one read of the process's smaps."""
    total, private, guest, anonymous, size = 0, 0, [], False, 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split() or [""]
        if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header: no path = anonymous
            anonymous = len(fields) == 5
        elif fields[0] == "Size:":
            size = int(fields[1])
        elif fields[0] == "Rss:":
            total += int(fields[1])
            if anonymous and size * KIB == guest_bytes:
                guest.append(int(fields[1]))
        elif fields[0] in ("Private_Clean:", "Private_Dirty:"):
            private += int(fields[1])
    if len(guest) != 1:
        raise RuntimeError(f"pid {pid}: {len(guest)} anonymous mappings of {guest_bytes} bytes, not 1")
    return total, private, guest[0]


def cpu_cgroup(pid: int) -> str:
    for line in read(Path(f"/proc/{pid}/cgroup")).splitlines():
        number, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") or (number == "0" and not controllers):
            return path
    return "?"


def host_cpu_s() -> tuple[float, float]:
    """CPU-seconds all CPUs spent busy since boot, and those the hypervisor stole."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks[:3]) + ticks[5] + ticks[6]) / TICK, ticks[7] / TICK


def process_cpu_s(pid: int) -> float:
    after_name = read(Path(f"/proc/{pid}/stat")).rsplit(")", 1)[-1].split()
    return (int(after_name[11]) + int(after_name[12])) / TICK if len(after_name) > 12 else 0.0


def tool_cpu_s(who: int) -> float:
    return resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime


def cpu_split(busy0: tuple[float, float], tool_s: float, pids: list[int]) -> dict[str, float]:
    """Where the host's CPU went since `busy0`: our QEMUs, the tool driving them, everything else."""
    busy, steal = host_cpu_s()
    qemu = sum(process_cpu_s(pid) for pid in pids)
    return {"busy": busy - busy0[0], "qemu": qemu, "tool": tool_s,
            "other": busy - busy0[0] - qemu - tool_s, "steal": steal - busy0[1]}


def wait_all(checks: Mapping[str, Check], start: float, results: dict[str, Result]) -> None:
    """Poll every check until each has said ready or failed, or TIMEOUT has passed."""
    pending = dict(checks)
    while pending:
        now = time.perf_counter()
        for name, check in list(pending.items()):
            outcome = check()
            if outcome is True:
                results[name].ready_s = now - start
            elif outcome:
                results[name].error = str(outcome)
            if outcome:
                del pending[name]
        if pending and now - start > TIMEOUT:
            for name in pending:
                results[name].error = f"not ready within {TIMEOUT:g} s"
            return
        time.sleep(POLL)


def run_virtkit(root: Path, names: list[str], memory: str, procs: list[subprocess.Popen[str]]) -> Batch:
    results = {name: Result(name) for name in names}
    busy0, cli0 = host_cpu_s(), tool_cpu_s(resource.RUSAGE_CHILDREN)
    start, epoch = time.perf_counter(), time.time()
    for name in names:
        argv = [str(VIRTKIT), f"--root={root}", "launch", "tiny", name, "--vm", "--wait", "--memory", memory]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))

    def exited(proc: subprocess.Popen[str]) -> bool | str:
        if proc.poll() is None:
            return False
        why = proc.stderr.read().strip() if proc.stderr else ""
        return proc.returncode == 0 or f"exit {proc.returncode}: {why}"

    wait_all({n: partial(exited, p) for n, p in zip(names, procs, strict=True)}, start, results)
    pids = [int(text) for name in names if (text := read(root / "instances" / name / "pid")).isdigit()]
    cpu = cpu_split(busy0, tool_cpu_s(resource.RUSAGE_CHILDREN) - cli0, pids)  # the CLIs are reaped
    for result in results.values():
        if result.error is None:
            doc = show(root, result.name)
            began = float((doc.get("live") or {}).get("started_at", doc["started_at"])) - epoch
            result.phases = {**doc["boot"], "began": began}
            result.phases["after"] = (result.ready_s or 0) - began - result.phases["ready"]
            result.probe(int(doc["pid"]), int(doc["memory"]))
    return Batch(list(results.values()), cpu)


def run_raw(root: Path, names: list[str], memory: str, procs: list[subprocess.Popen[bytes]]) -> Batch:
    results = {name: Result(name) for name in names}
    runtimes = []
    for name in names:
        vk(root, "create", "tiny", name, "--vm", "--memory", memory)
        runtimes.append(show(root, name, "--runtime"))
        Path(runtimes[-1]["config"]["ready_file"]).write_bytes(b"")
    busy0, self0 = host_cpu_s(), tool_cpu_s(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for name, runtime in zip(names, runtimes, strict=True):
        with (root / "instances" / name / "raw.log").open("wb") as log:
            procs.append(subprocess.Popen(runtime["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True))  # as virtkit spawns it

    def ready(proc: subprocess.Popen[bytes], ready_file: Path) -> bool | str:
        if MARKER in ready_file.read_bytes():
            return True
        return proc.poll() is not None and f"QEMU exited {proc.returncode} before it was ready"

    checks = {name: partial(ready, proc, Path(runtime["config"]["ready_file"]))
              for name, proc, runtime in zip(names, procs, runtimes, strict=True)}
    wait_all(checks, start, results)
    cpu = cpu_split(busy0, tool_cpu_s(resource.RUSAGE_SELF) - self0, [p.pid for p in procs])
    for proc, runtime, result in zip(procs, runtimes, results.values(), strict=True):
        if result.error is None:
            result.probe(proc.pid, int(runtime["config"]["memory"]))
    return Batch(list(results.values()), cpu)


def cleanup(root: Path, names: list[str], launches: list[subprocess.Popen[str]],
            raws: list[subprocess.Popen[bytes]]) -> None:
    """Stop every process this run started, delete its instances, kill any QEMU left under `root`."""
    for raw in raws:
        raw.kill()  # a no-op for one already reaped
        raw.wait(10)
    for launch in launches:
        launch.send_signal(signal.SIGINT)  # a CLI still running undoes what it had done
    for launch in launches:
        try:
            launch.wait(15)
        except subprocess.TimeoutExpired:
            launch.kill()
            launch.wait(10)
    if not root.exists():
        return
    deletes = [
        subprocess.Popen([str(VIRTKIT), "--root", str(root), "delete", "--force", name],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in names if (root / "instances" / name).exists()
    ]
    for delete in deletes:
        delete.wait(60)
    marker = str(root).encode()
    for entry in Path("/proc").iterdir():  # a QEMU from a launch cut short, known by its paths
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


def cells(*values: float | None, digits: int = 2) -> str:
    return " ".join(f"{v:>6.{digits}f}" if v is not None else f"{'-':>6}" for v in values)


def memory_cells(result: Result) -> str:
    rss, guest = result.rss_kib, result.guest_rss_kib
    return cells(rss / KIB if rss else None, guest / KIB if guest else None, result.overhead_mib(),
                 result.overhead_mib("private_kib"), digits=1)


def report(count: int, memory: str, ours: Batch, raw: Batch) -> bool:
    print(f"{'vm':<5} {'cli':>6} {' '.join(f'{p:>6}' for p in PHASES)} {'rss':>6} {'guest':>6} {'ovh':>6}"
          f" {'priv':>6}  | {'raw':>6} {'rss':>6} {'guest':>6} {'ovh':>6} {'priv':>6}   (seconds, MiB)")
    for mine, theirs in zip(ours.results, raw.results, strict=True):
        print(f"{mine.name:<5} {cells(mine.ready_s, *(mine.phases.get(p) for p in PHASES))} "
              f"{memory_cells(mine)}  | {cells(theirs.ready_s)} {memory_cells(theirs)}")
    failed = [f"{r.name}: {r.error}" for r in ours.results + raw.results if r.error]
    for line in failed:
        print(f"FAILED {line}")
    ratio = ours.total_s / raw.total_s if ours.total_s and raw.total_s else None
    print(f"all {count} ready: virtkit {cells(ours.total_s)} s, raw {cells(raw.total_s)} s, "
          + (f"ratio virtkit/raw {ratio:.2f}" if ratio else "ratio n/a (a VM failed)"))
    for total, what in (("rss_kib", "RSS"), ("private_kib", "private RSS")):
        means = [cells(batch.mean_overhead_mib(total), digits=1) for batch in (ours, raw)]
        print(f"mean QEMU overhead ({what} - guest RAM RSS): virtkit {means[0]} MiB, raw {means[1]} MiB")
    for label, batch, tool in (("virtkit", ours, "virtkit CLIs"), ("raw", raw, "this script")):
        cpu = batch.cpu
        print(f"{label:<7} CPU-s until all ready: {cpu['busy']:.1f} busy = QEMUs {cpu['qemu']:.1f} + {tool}"
              f" {cpu['tool']:.1f} + other work {cpu['other']:.1f} (steal {cpu['steal']:.1f});"
              f" QEMU cpu cgroup e.g. {batch.results[0].cgroup}")
    print(json.dumps({
        "benchmark": "vm_parallel", "count": count, "memory": memory,
        "virtkit_total_s": ours.total_s, "raw_total_s": raw.total_s, "ratio": ratio,
        "overhead_mib_mean": {"virtkit": ours.mean_overhead_mib(), "raw": raw.mean_overhead_mib()},
        "private_overhead_mib_mean": {"virtkit": ours.mean_overhead_mib("private_kib"),
                                      "raw": raw.mean_overhead_mib("private_kib")},
        "cpu_s": {"virtkit": ours.cpu, "raw": raw.cpu},
        "virtkit": [asdict(r) for r in ours.results], "raw": [asdict(r) for r in raw.results],
    }))
    return not failed


def interrupted(signum: int, frame: object) -> None:  # SIGTERM: clean up as for Ctrl-C
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--count", type=int, default=10, help="VMs per batch (default 10)")
    parser.add_argument("--memory", default="256MiB", help="memory of each VM (default 256MiB)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    ours_names = [f"vm{i}" for i in range(1, args.count + 1)]
    raw_names = [f"r{i}" for i in range(1, args.count + 1)]
    launches: list[subprocess.Popen[str]] = []
    raws: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="vk-parallel-") as tmp:
        os.chmod(tmp, 0o711)  # as /var/lib/virtkit: QEMU runs as virtkit-qemu, the default path
        root = Path(tmp) / "root"
        try:
            vk(root, "image", "build", "tiny")
            ours = run_virtkit(root, ours_names, args.memory, launches)
            cleanup(root, ours_names, launches, [])  # an idle host for the raw batch
            launches.clear()
            raw = run_raw(root, raw_names, args.memory, raws)
        except KeyboardInterrupt as stop:
            print(f"interrupted ({str(stop) or 'Ctrl-C'}): cleaning up", file=sys.stderr)
            sys.exit(130)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            cleanup(root, ours_names + raw_names, launches, raws)
            signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(0 if report(args.count, args.memory, ours, raw) else 1)


if __name__ == "__main__":
    os.umask(0o022)
    main()
