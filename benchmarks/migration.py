"""Live migration (issue 9): `virtkit move NAME --to REMOTE --live` of an idle 256 MiB tiny VM,
side by side with raw QEMU doing the same migration in the same run; then a guest dirtying
about 50 MiB/s of its memory.

Run: .venv/bin/python benchmarks/migration.py [--runs 3]

Everything runs in a network namespace of its own (`unshare --net`, loopback only). Two state
roots stand for two hosts: A (the tiny image built there, untimed) and B (a copy of A's database
and images), B served by `virtkit serve --listen 127.0.0.1:PORT` and known to A's CLI as remote
`b`. Each run launches the VM on A and waits for its guest (untimed), then times:
- virtkit: `virtkit move vm --to b --live` from its start to its end (the destination's QEMU
  started through the API, disks mirrored over NBD, RAM migrated, the guest running on B, the VM
  removed from A); downtime as QEMU measured it, and the switchover (from the migration's end to
  the guest running on B, through the API);
- raw: two `qemu-system-x86_64` processes with the same command line virtkit saved (run as root,
  no confinement), driven over QMP exactly as virtkit does: start the destination with -S
  -incoming defer, NBD export, blockdev-mirror, migrate with downtime-limit 50 ms (under TCG with
  the guest paused first, as virtkit does: drivers/qemu/migration.py says why), mirror's last
  pass, `cont` on the destination: timed from the destination's start to its `cont`.
The ratio virtkit/raw is printed (goal: at most 1.3), then a run with the guest copying a 48 MiB
tmpfs file in a loop while it moves (goal: it converges; total time and downtime printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from twohosts import two_hosts, vk

PORT = 18443
DIRTY = ("dd if=/dev/urandom of=/dev/shm/src bs=1M count=48 2>/dev/null; "
         "(while :; do cp /dev/shm/src /dev/shm/dst; done) >/dev/null 2>&1 &")  # fmt: skip


def virtkit_move(a: Path, config: Path) -> dict[str, float]:
    start = time.perf_counter()
    moved = json.loads(vk(a, "move", "vm", "--to", "b", "--live", "--json", config=config))
    took = time.perf_counter() - start
    print(f"  virtkit phases: {moved['phases']}, total in the op {moved['total_s']:.2f} s", flush=True)
    return {"total": took, "downtime_ms": float(moved["downtime_ms"] or 0),
            "switchover_ms": 1000 * float(moved["phases"].get("switchover", 0.0)),
            "paused_ms": float(moved["paused_ms"] or 0)}  # fmt: skip


def raw_move(argv: list[str], work: Path, disk: Path) -> dict[str, float]:
    """The same migration with plain QEMU processes (source and destination started here)."""
    from qemu.qmp import QMPClient

    src_dir, dst_dir = work / "src", work / "dst"
    for directory in (src_dir, dst_dir):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    instance = disk.parent
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    for directory in (src_dir, dst_dir):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        info["full-backing-filename"], str(directory / disk.name)], check=True)  # fmt: skip

    def argv_in(directory: Path) -> list[str]:
        return [a.replace(str(instance), str(directory)) for a in argv]

    logs = [open(d / "log", "wb") for d in (src_dir, dst_dir)]  # noqa: SIM115
    source = subprocess.Popen(argv_in(src_dir), stdout=logs[0], stderr=subprocess.STDOUT)
    time.sleep(4.0)  # the guest boots (a busybox init under TCG: about 3.5 s)

    async def migrate() -> dict[str, float]:
        src = QMPClient("src")
        await src.connect(str(src_dir / "monitor.sock"))
        start = time.perf_counter()
        dest = subprocess.Popen([*argv_in(dst_dir), "-S", "-incoming", "defer"], stdout=logs[1],
                                stderr=subprocess.STDOUT)  # fmt: skip
        dst = QMPClient("dst")
        for _ in range(500):
            try:
                await dst.connect(str(dst_dir / "monitor.sock"))
                break
            except Exception:  # not listening yet
                await asyncio.sleep(0.01)
        late = [{"capability": "late-block-activate", "state": True}]
        await dst.execute("migrate-set-capabilities", {"capabilities": late})
        nbd = {"host": "127.0.0.1", "port": "10809"}
        await dst.execute("nbd-server-start", {"addr": {"type": "inet", "data": nbd}})
        await dst.execute("block-export-add", {"type": "nbd", "id": "e0", "node-name": "disk0",
                                               "name": "disk0", "writable": True})  # fmt: skip
        await dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:10810"})
        await src.execute("blockdev-add", {"driver": "nbd", "node-name": "t0", "export": "disk0",
                                           "server": {"type": "inet", **nbd}})
        await src.execute("blockdev-mirror", {"job-id": "t0", "device": "disk0", "target": "t0",
                                              "sync": "top", "copy-mode": "write-blocking"})  # fmt: skip
        while not all(j["ready"] for j in await src.execute("query-block-jobs")):
            await asyncio.sleep(0.02)
        await src.execute("migrate-set-capabilities",
                          {"capabilities": [{"capability": "auto-converge", "state": True}]})  # fmt: skip
        await src.execute("migrate-set-parameters", {"downtime-limit": 50})
        if "tcg" in argv:  # as virtkit does under TCG: the RAM copied paused (drivers/qemu/migration.py)
            await src.execute("stop")
        await src.execute("migrate", {"uri": "tcp:127.0.0.1:10810"})
        while (state := await src.execute("query-migrate"))["status"] not in ("completed", "failed"):
            await asyncio.sleep(0.02)
        await src.execute("block-job-cancel", {"device": "t0"})
        while await src.execute("query-block-jobs"):
            await asyncio.sleep(0.01)
        while (await dst.execute("query-migrate"))["status"] != "completed":
            await asyncio.sleep(0.01)
        await dst.execute("nbd-server-stop")
        await dst.execute("cont")
        took = time.perf_counter() - start
        for client in (src, dst):
            with contextlib.suppress(Exception):  # QEMU hangs up on quit
                await client.execute("quit")
            with contextlib.suppress(Exception):
                await client.disconnect()
        dest.wait(10)
        return {"total": took, "downtime_ms": float(state.get("downtime", 0))}

    try:
        return asyncio.run(migrate())
    finally:
        source.kill()
        source.wait()
        for log in logs:
            log.close()


def inside(args: argparse.Namespace) -> None:
    with two_hosts("vk-bench-migration-", PORT) as (work, a, b, config):
        results: dict[str, list[dict[str, float]]] = {"virtkit": [], "raw": []}
        for _ in range(args.runs):
            vk(a, "launch", "tiny", "vm", "--vm", "--memory", "256MiB", "--wait", config=config)
            runtime = json.loads(vk(a, "show", "vm", "--runtime", "--json", config=config))
            disk = a / "instances" / "vm" / "root.qcow2"
            results["raw"].append(raw_move(runtime["argv"], work / "raw", disk))
            results["virtkit"].append(virtkit_move(a, config))
            vk(b, "delete", "--force", "vm", config=config)
        report(results)
        vk(a, "launch", "tiny", "vm", "--vm", "--memory", "256MiB", "--wait", config=config)
        vk(a, "exec", "vm", "--", "sh", "-c", DIRTY, config=config)
        time.sleep(2.0)
        dirty = virtkit_move(a, config)
        print(f"dirtying guest (a 48 MiB tmpfs copy in a loop): converged in {dirty['total']:.2f} s, "
              f"downtime {dirty['downtime_ms']:.0f} ms, switchover {dirty['switchover_ms']:.0f} ms, "
              f"guest paused {dirty['paused_ms']:.0f} ms")
        vk(b, "delete", "--force", "vm", config=config)


def report(results: dict[str, list[dict[str, float]]]) -> None:
    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    for kind in ("raw", "virtkit"):
        runs = ", ".join(f"{r['total']:.2f} s" for r in results[kind])
        extra = (f", switchover median {median(kind, 'switchover_ms'):.0f} ms, guest paused median "
                 f"{median(kind, 'paused_ms'):.0f} ms" if kind == "virtkit" else "")  # fmt: skip
        print(f"{kind:8} idle 256 MiB VM: total median {median(kind, 'total'):.2f} s ({runs}); "
              f"downtime median {median(kind, 'downtime_ms'):.0f} ms{extra}")
    ratio = median("virtkit", "total") / median("raw", "total")
    print(f"virtkit / raw QEMU total time: {ratio:.2f}x (goal: <= 1.3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    done = subprocess.run(["unshare", "--net", "--", sys.executable, __file__, "--inside",
                           "--runs", str(args.runs)], check=False)  # fmt: skip
    sys.exit(done.returncode)


if __name__ == "__main__":
    os.umask(0o022)
    main()
