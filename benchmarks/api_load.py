"""The REST API under load (issue 8): `GET /1.0/instances` with 1,000 instance records, and launch/delete
of tiny containers through the API, each against the same work without the API in the same run.

Run: .venv/bin/python benchmarks/api_load.py [--records 1000] [--clients 1,4,16] [--seconds 10]
                                             [--launches 10] [--parallel 10]
(a) list: 1,000 defined, stopped instances (half VMs, half containers) put straight into the store
    (no files, no processes: the drivers find nothing running, as for any stopped instance); a
    `virtkit serve` on the Unix socket and one on 127.0.0.1 with TLS and a viewer token; for each
    transport and each number of clients, that many client processes (one httpx client each, keep-
    alive) asking `GET /1.0/instances` as fast as they can for a fixed time: requests/s, p50 and
    p99 latency. Beside it, in the same run: the same list made in-process (`Lifecycle.views()`
    and its JSON, the floor any transport adds to) and `virtkit list --json` through the local CLI.
(b) launch/delete: tiny containers (busybox init, detached) through the API (POST /1.0/instances
    as an operation, waited for; DELETE ?force=true), one after another and `--parallel` at once,
    against `virtkit launch tiny cN --container` / `virtkit delete --force cN` through the local CLI
    and raw `runc run -d` / `runc delete -f` of a bundle virtkit's planner makes for the same image
    (user namespace, seccomp, limits; its overlay mounted once beforehand and shared: the floor),
    and podman (`run -d` / `rm -f` of the same image tree) when it is installed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

VIRTKIT = Path(sys.executable).parent / "virtkit"
START_TIMEOUT = 30.0
OP_TIMEOUT = 120.0  # an API operation that takes longer is a failure (reported), not a hang


# --- servers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_cert(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=virtkit bench", "-addext", "subjectAltName=IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


class Served:
    """One `virtkit serve` process and how to reach it."""

    def __init__(self, root: Path, env: dict[str, str], tls: Path | None) -> None:
        argv = [str(VIRTKIT), "--root", str(root), "serve"]
        self.cert: Path | None = None
        if tls is None:
            self.url = f"unix:{root / 'unix.socket'}"
        else:
            self.cert, key = make_cert(tls)
            port = free_port()
            argv += ["--listen", f"127.0.0.1:{port}", "--tls-cert", str(self.cert), "--tls-key", str(key)]
            self.url = f"https://127.0.0.1:{port}"
        self.log = root.parent / f"serve-{'tls' if tls else 'unix'}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while "listening on" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"virtkit serve did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def http_client(url: str, cert: Path | None, token: str | None, timeout: float = 120) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if url.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=url[5:])
        return httpx.Client(transport=transport, base_url="http://virtkit", headers=headers, timeout=timeout)
    verify = ssl.create_default_context(cafile=str(cert))
    return httpx.Client(base_url=url, headers=headers, verify=verify, timeout=timeout)


# --- (a) the list under load ------------------------------------------------------------------------


def fill(root: Path, count: int, image: str) -> None:
    """`count` defined, stopped instances, straight into the store (what `create` records, without
    its files: the drivers see a stopped instance either way)."""
    from virtkit.model import InstanceKind, InstanceRecord
    from virtkit.store import open_store

    store = open_store(root)
    try:
        with store.transaction():
            for index in range(count):
                kind = InstanceKind.VM if index % 2 else InstanceKind.CONTAINER
                record = InstanceRecord(name=f"load{index:04d}", kind=kind, image=image,
                                        config={"bench": "api_load"}, labels={"n": str(index)})  # fmt: skip
                store.create(record)
    finally:
        store.close()


def unfill(root: Path, count: int) -> None:
    from virtkit.model import InstanceRecord
    from virtkit.store import open_store

    store = open_store(root)
    try:
        with store.transaction():
            for index in range(count):
                store.delete(InstanceRecord, f"load{index:04d}")
    finally:
        store.close()


def _hammer(url: str, cert: str | None, token: str | None, path: str, start: float, stop: float,
            out: Any) -> None:  # fmt: skip
    """One client process: GET `path` from `start` until `stop` (monotonic clock, shared by every
    process of the machine); its latencies and its failures sent back."""
    client = http_client(url, Path(cert) if cert else None, token)
    latencies: list[float] = []
    failures = 0
    client.get("/1.0")  # connection (and TLS handshake) made before the clock starts
    while time.monotonic() < start:
        time.sleep(0.001)
    while (began := time.monotonic()) < stop:
        response = client.get(path)
        elapsed = time.monotonic() - began
        if response.status_code == 200 and response.content[:1] in (b"[", b"#"):
            latencies.append(elapsed)
        else:
            failures += 1
    client.close()
    out.put((latencies, failures))


def load(url: str, cert: Path | None, token: str | None, clients: int, seconds: float,
         path: str = "/1.0/instances") -> dict[str, float]:  # fmt: skip
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    start = time.monotonic() + 1.0 + 0.05 * clients
    stop = start + seconds
    given = (url, str(cert) if cert else None, token, path, start, stop, queue)
    workers = [context.Process(target=_hammer, args=given) for _ in range(clients)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=seconds + 300) for _ in workers]
    for worker in workers:
        worker.join(30)
    latencies = sorted(value for found, _ in results for value in found)
    failures = sum(failed for _, failed in results)
    if not latencies:
        raise RuntimeError(f"no request to {url} succeeded ({failures} failed)")
    # the last request of each client may end after `stop`: the rate counts what ended in the window
    return {
        "requests": len(latencies), "failures": failures, "rate": len(latencies) / seconds,
        "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
    }  # fmt: skip


def percentile(ordered: list[float], pct: float) -> float:
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def in_process(root: Path, runs: int) -> tuple[float, int]:
    """Median time of the list made in this process (ops + JSON), and its size in bytes."""
    from virtkit.ops.lifecycle import Lifecycle
    from virtkit.store import open_store

    store = open_store(root)
    times = []
    size = 0
    try:
        for _ in range(runs):
            began = time.perf_counter()
            body = json.dumps([view.to_dict() for view in Lifecycle(root, store).views()]).encode()
            times.append(time.perf_counter() - began)
            size = len(body)
    finally:
        store.close()
    return statistics.median(times), size


def timed(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:5])}... failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def list_benchmark(root: Path, env: dict[str, str], args: argparse.Namespace, image: str) -> None:
    fill(root, args.records, image)
    before, size = in_process(root, 15)
    cli = statistics.median(timed([str(VIRTKIT), "list", "--json"], env) for _ in range(3))
    token = subprocess.run([str(VIRTKIT), "token", "create", "loadviewer", "--role", "viewer"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    unix = Served(root, env, None)
    tls = Served(root, env, root.parent / "tls")
    rows = []
    metrics = []
    try:
        for served, name, secret in ((unix, "unix socket", None), (tls, "TLS + token", token)):
            for clients in args.clients:
                found = load(served.url, served.cert, secret, clients, args.seconds)
                rows.append((name, clients, found))
            metrics.append((name, load(served.url, served.cert, secret, 1, args.seconds, "/metrics")))
        after, _size = in_process(root, 15)
    finally:
        unix.stop()
        tls.stop()
    unfill(root, args.records)
    floor = min(before, after)  # the quieter of the two: others' load only ever adds
    print(f"\n(a) GET /1.0/instances, {args.records} records ({size / 1024:.0f} KiB of JSON), "
          f"{args.seconds:g} s per case")  # fmt: skip
    print(f"in-process list (ops + JSON), median of 15 before and after: {before * 1000:.1f} / "
          f"{after * 1000:.1f} ms (ratios to {floor * 1000:.1f})"
          f"; `virtkit list --json` (CLI), median of 3: {cli * 1000:.1f} ms")  # fmt: skip
    print(f"{'transport':<12} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50/in-proc':>11} "
          f"{'req/s x CLI':>11} {'failed':>6}")  # fmt: skip
    for name, clients, found in rows:
        print(f"{name:<12} {clients:>7} {found['rate']:>8.1f} {found['p50'] * 1000:>8.1f} "
              f"{found['p99'] * 1000:>8.1f} {found['p50'] / floor:>11.2f} {found['rate'] * cli:>11.2f} "
              f"{found['failures']:>6.0f}")  # fmt: skip
    for name, found in metrics:
        print(f"GET /metrics ({args.records} stopped), {name}, 1 client: {found['rate']:.1f} req/s, "
              f"p50 {found['p50'] * 1000:.1f} ms, p99 {found['p99'] * 1000:.1f} ms, "
              f"{found['failures']:.0f} failed")  # fmt: skip


def unwedge(server: int) -> int:
    """SIGKILL the children of the server process that are forks of it that never exec'd (their
    command line is the server's own) and have lived for more than 30 s; how many. Such children
    are the sign of a deadlock between forks made by concurrent threads (see docs/benchmarks.md)."""
    import signal

    def cmdline(pid: int | str) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    own, killed = cmdline(server), 0
    ticks, uptime = os.sysconf("SC_CLK_TCK"), float(Path("/proc/uptime").read_text().split()[0])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        age = uptime - int(fields[19]) / ticks
        if int(fields[1]) == server and cmdline(entry.name) == own and age > 30:
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
    return killed


# --- (b) launch and delete --------------------------------------------------------------------------


def raw_bundles(root: Path, work: Path, count: int) -> tuple[list[Path], Path]:
    """`count` bundles running the tiny image's own command under runc, as virtkit's planner makes
    them (one-shot plan: same user namespace, seccomp, limits), each with its own cgroup, all on one
    overlay mounted beforehand; and that mount."""
    from virtkit.drivers.base import InstancePaths
    from virtkit.drivers.oci import rootfs
    from virtkit.drivers.oci.bundle import build_config
    from virtkit.drivers.oci.plan import ContainerFiles
    from virtkit.ops.run import RunRequest, plan_oneshot

    request = RunRequest(image="tiny", command=("/bin/sleep", "3600"))
    paths = InstancePaths(work / "raw")
    paths.dir.mkdir(parents=True, mode=0o711)
    plan = plan_oneshot(root, request, request.config(), paths)
    files = ContainerFiles(paths)
    for directory in (files.upper, files.work, files.bundle):
        directory.mkdir(parents=True)
    config = build_config(plan.spec)
    config["root"]["path"] = str(files.merged)
    rootfs.mount(rootfs.Layers(plan.lower, files.upper, files.work, files.merged))
    bundles = []
    for index in range(count):
        bundle = work / f"bundle{index}"
        bundle.mkdir()
        own = json.loads(json.dumps(config))
        own["linux"]["cgroupsPath"] = f"/virtkit/vkbench-raw{index}-{os.getpid()}"  # as virtkit's own
        (bundle / "config.json").write_text(json.dumps(own))
        bundles.append(bundle)
    return bundles, files.merged


def runc_cases(work: Path, bundles: list[Path]) -> tuple[list[list[str]], list[list[str]]]:
    from virtkit.drivers.oci.runtime import runc_binary

    base = [runc_binary(), "--root", str(work / "runc")]
    run = [[*base, "run", "-d", "--bundle", str(b), f"vkbench-raw{i}"] for i, b in enumerate(bundles)]
    return run, [[*base, "delete", "-f", f"vkbench-raw{i}"] for i in range(len(bundles))]


def podman_cases(lower: Path, count: int) -> tuple[list[list[str]], list[list[str]]]:
    podman = shutil.which("podman")
    if podman is None:
        return [], []
    base = [podman, "--runtime", "runc"]
    run = [[*base, "run", "-d", "--name", f"vkbench-api{i}", "--ulimit", "nofile=1024:1024",
            "--ulimit", "nproc=1024:1024", "--rootfs", f"{lower}:O", "/bin/sleep", "3600"]
           for i in range(count)]  # fmt: skip
    return run, [[*base, "rm", "-f", "-t", "0", f"vkbench-api{i}"] for i in range(count)]


def run_quiet(argv: list[str], env: dict[str, str] | None = None) -> None:
    """A command whose detached child keeps its stdio: no pipes (they would never reach EOF), its
    errors through a file."""
    with tempfile.TemporaryFile() as errors:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                              env=env, check=False, timeout=120)  # fmt: skip
        if done.returncode != 0:
            errors.seek(0)
            said = errors.read().decode(errors="replace").strip()
            raise RuntimeError(f"{' '.join(argv[:5])}... failed ({done.returncode}): {said}")


def ignore(_result: object) -> None:
    """What a step returns is not measured."""


def each(steps: list[Callable[[], None]], parallel: int) -> tuple[float, list[float]]:
    """Run `steps` (`parallel` at a time): the wall time of all, and each one's own time."""

    def one(step: Callable[[], None]) -> float:
        began = time.perf_counter()
        step()
        return time.perf_counter() - began

    began = time.perf_counter()
    if parallel <= 1:
        times = [one(step) for step in steps]
    else:
        with ThreadPoolExecutor(parallel) as pool:
            times = list(pool.map(one, steps))
    return time.perf_counter() - began, times


Steps = list[Callable[[], None]]
Case = tuple[Steps, Steps, Steps]  # launch, delete, clean-up after a failure: one step per container


def launch_benchmark(root: Path, work: Path, env: dict[str, str], args: argparse.Namespace) -> bool:
    """Launch/delete through each tool; whether every attempt succeeded."""
    from virtkit.api.client import Client
    from virtkit.drivers.oci import rootfs
    from virtkit.store import peek

    image = peek.image(root, "tiny")
    assert image is not None
    lower = root / "images" / image["fingerprint"] / image["files"]["rootfs"]
    names = [f"c{i}" for i in range(max(args.launches, args.parallel))]
    bundles, merged = raw_bundles(root, work, len(names))
    unix = Served(root, env, None)
    api = Client(unix.url, timeout=300)

    def bounded(document: Any) -> None:
        """Wait for the operation, OP_TIMEOUT at most (a wedged server must not hang the benchmark)."""
        if isinstance(document, dict) and "id" in document and "action" in document:
            ended = api.wait(str(document["id"]), timeout=OP_TIMEOUT)
            if ended.get("status") in ("pending", "running"):
                raise TimeoutError(f"operation {document['action']} did not end within {OP_TIMEOUT:g} s")

    def api_launch(name: str) -> Callable[[], None]:
        body = {"image": "tiny", "name": name, "kind": "container"}
        return lambda: bounded(api.request("POST", "/1.0/instances", json=body))

    def api_delete(name: str) -> Callable[[], None]:
        return lambda: bounded(api.request("DELETE", f"/1.0/instances/{name}", params={"force": True}))

    def tool(argv: list[str], with_env: dict[str, str] | None = None) -> Callable[[], None]:
        return lambda: run_quiet(argv, with_env)

    def anyway(argv: list[str], with_env: dict[str, str] | None = None) -> Callable[[], None]:
        return lambda: ignore(subprocess.run(argv, env=with_env, capture_output=True, check=False))

    vk = str(VIRTKIT)
    run, remove = runc_cases(work, bundles)
    tools: dict[str, Case] = {
        "API": ([api_launch(n) for n in names], [api_delete(n) for n in names],
                [anyway([vk, "delete", "--force", n], env) for n in names]),
        "CLI": ([tool([vk, "launch", "tiny", n, "--container"], env) for n in names],
                [tool([vk, "delete", "--force", n], env) for n in names],
                [anyway([vk, "delete", "--force", n], env) for n in names]),
        "raw runc": ([tool(a) for a in run], [tool(a) for a in remove], [anyway(a) for a in remove]),
    }  # fmt: skip
    podman_run, podman_rm = podman_cases(lower, len(names))
    if podman_run:
        tools["podman"] = ([tool(a) for a in podman_run], [tool(a) for a in podman_rm],
                           [anyway(a) for a in podman_rm])  # fmt: skip
    sequential: dict[str, list[float]] = {f"{t} {verb}": [] for t in tools for verb in ("launch", "delete")}
    parallel: dict[str, list[tuple[float, list[float]]]] = {key: [] for key in sequential}
    failed: dict[str, list[str]] = {}

    def attempt(name: str, up: Steps, down: Steps, cleanup: Steps, parallelism: int) -> None:
        """One launch batch then its delete batch; a failure is recorded, the server unwedged (see
        unwedge) and what was made removed, and the benchmark goes on."""
        case = f"{name} {'one after another' if parallelism == 1 else f'{parallelism} at once'}"
        try:
            launched = each(up, parallelism)
            deleted = each(down, parallelism)
        except Exception as exc:  # told in the report; the benchmark goes on
            failed.setdefault(case, []).append(str(exc)[:200])
            stuck = unwedge(unix.process.pid) if name == "API" else 0
            if stuck:
                failed[case].append(f"{stuck} forked children of the server never exec'd (killed to go on)")
            for step in cleanup:
                step()
            return
        if parallelism == 1:
            sequential[f"{name} launch"].append(launched[0])
            sequential[f"{name} delete"].append(deleted[0])
        else:
            parallel[f"{name} launch"].append(launched)
            parallel[f"{name} delete"].append(deleted)

    try:
        # Interleaved, so that the load others put on the machine falls on every tool alike.
        for index in range(args.launches):
            for name, (up, down, cleanup) in tools.items():
                attempt(name, [up[index]], [down[index]], [cleanup[index]], 1)
        for _ in range(args.rounds):
            for name, (up, down, cleanup) in tools.items():
                count = args.parallel
                attempt(name, up[:count], down[:count], cleanup[:count], count)
    except BaseException:
        for _up, _down, cleanup in tools.values():
            for step in cleanup:
                step()
        raise
    finally:
        api.close()
        unix.stop()
        rootfs.unmount(merged)
    report_launches(sequential, parallel, args)
    for case, reasons in failed.items():
        print(f"FAILED {case} ({len(reasons)}): " + " | ".join(reasons))
    return not failed


def ratio(value: float, base: list[float]) -> str:
    return f"{value / statistics.median(base):>7.2f}" if base else f"{'-':>7}"


def report_launches(
    sequential: dict[str, list[float]], parallel: dict[str, list[tuple[float, list[float]]]],
    args: argparse.Namespace,
) -> None:
    print("\n(b) tiny containers: launch (detached, not waiting for readiness) and delete --force")
    print(f"one after another, {args.launches} each (interleaved):")
    print(f"  {'case':<16} {'runs':>4} {'median s':>9} {'max s':>7} {'ops/s':>7} {'x raw':>7} {'x CLI':>7}")
    for case, times in sequential.items():
        if not times:
            print(f"  {case:<16} {0:>4} every run failed")
            continue
        verb = case.rsplit(" ", 1)[1]
        median = statistics.median(times)
        rate = len(times) / sum(times)
        print(f"  {case:<16} {len(times):>4} {median:>9.3f} {max(times):>7.3f} {rate:>7.1f} "
              f"{ratio(median, sequential[f'raw runc {verb}'])} {ratio(median, sequential[f'CLI {verb}'])}")
    print(f"{args.parallel} at once, {args.rounds} rounds (wall: until the last of them ends; median round):")
    print(f"  {'case':<16} {'runs':>4} {'wall s':>9} {'op median':>9} {'op max':>7} {'ops/s':>7} "
          f"{'x raw':>7} {'x CLI':>7}")  # fmt: skip
    walls = {case: [wall for wall, _ in rounds] for case, rounds in parallel.items()}
    for case, rounds in parallel.items():
        if not rounds:
            print(f"  {case:<16} {0:>4} every round failed")
            continue
        verb = case.rsplit(" ", 1)[1]
        wall = statistics.median(walls[case])
        ops = [time_ for _, times in rounds for time_ in times]
        print(f"  {case:<16} {len(rounds):>4} {wall:>9.3f} {statistics.median(ops):>9.3f} {max(ops):>7.3f} "
              f"{args.parallel / wall:>7.1f} {ratio(wall, walls[f'raw runc {verb}'])} "
              f"{ratio(wall, walls[f'CLI {verb}'])}")  # fmt: skip


def main() -> None:
    raw_help = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw_help)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--clients", type=lambda text: [int(n) for n in text.split(",")], default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--launches", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["list", "launch"], default=None)
    args = parser.parse_args()
    from virtkit.store import peek

    with tempfile.TemporaryDirectory(prefix="vk-bench-", dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o711)  # each container's root (its own host uid) must pass through
        root, work = Path(tmp) / "root", Path(tmp) / "work"
        work.mkdir()
        # As a user runs it: Python may cache bytecode (see container_many.py).
        env = {**os.environ, "VIRTKIT_ROOT": str(root)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([str(VIRTKIT), "image", "build", "tiny"], check=True, capture_output=True, env=env)
        image = peek.image(root, "tiny")
        assert image is not None
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
        if args.only in (None, "list"):
            list_benchmark(root, env, args, str(image["fingerprint"]))
        ok = True
        if args.only in (None, "launch"):
            ok = launch_benchmark(root, work, env, args)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.umask(0o022)
    main()
