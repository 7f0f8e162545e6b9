"""Cold move (issue 9): `virtkit move NAME --to REMOTE` of a running tiny container whose root
filesystem holds 500 MiB of random data, against a raw copy of the same files in the same run.

Run: .venv/bin/python benchmarks/move_cold.py [--runs 3] [--size-mib 500]

Everything runs in a network namespace of its own (`unshare --net`, loopback only). Two state
roots stand for two hosts: A (the tiny image built there, untimed) and B (a copy of A's database
and images), B served by `virtkit serve --listen 127.0.0.1:PORT` (TLS) and known to A's CLI as
remote `b`. Each run launches a container on A and writes SIZE MiB of random data into it
(untimed), then times:
- raw: `tar -C UPPER -cf - . | cat | tar -C DEST -xf -` of the container's writable layer (the
  500 MiB and what else it wrote) into a directory of B's root, then `sync`: the bytes moved with
  no checksum, no archive format, no API, no stop and no start;
- virtkit: `virtkit move c --to b --json`, from the CLI's start to its end (the checks through B's
  API; the pre-copy while it runs: a snapshot, its archive (layer, snapshot, image, checksums;
  zstd) exported into a file read as it grows and uploaded, imported on B with every checksum
  verified; the container stopped; the difference since the snapshot sent and applied on B;
  started there, confirmed running through the API, removed from A); downtime as the move reports
  it (the stop here to running there) and the total time.
The ratios virtkit total / raw and downtime / raw are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from twohosts import two_hosts, vk

PORT = 18444


def raw_copy(upper: Path, dest: Path) -> float:
    dest.mkdir()
    start = time.perf_counter()
    subprocess.run(f"tar -C {upper} -cf - . | cat | tar -C {dest} -xf - && sync", shell=True, check=True)
    took = time.perf_counter() - start
    shutil.rmtree(dest)
    return took


def virtkit_move(a: Path, config: Path) -> dict[str, float]:
    start = time.perf_counter()
    moved = json.loads(vk(a, "move", "c", "--to", "b", "--json", config=config))
    took = time.perf_counter() - start
    print(f"  virtkit: {moved['precopy_bytes'] / 2**20:.0f} MiB sent while it ran, {moved['bytes']} bytes "
          f"once stopped, downtime {moved['downtime_s']:.2f} s, "
          f"total {took:.2f} s; phases {', '.join(f'{k} {v:.2f} s' for k, v in moved['phases'].items())}",
          flush=True)  # fmt: skip
    return {"total": took, "downtime": float(moved["downtime_s"]), "bytes": float(moved["bytes"])}


def inside(args: argparse.Namespace) -> None:
    with two_hosts("vk-bench-movecold-", PORT) as (_work, a, b, config):
        raws: list[float] = []
        moves: list[dict[str, float]] = []
        for run in range(args.runs):
            vk(a, "launch", "tiny", "c", "--container", "--wait", config=config)
            vk(a, "exec", "c", "--", "sh", "-c",
               f"head -c {args.size_mib * 2**20} /dev/urandom > /root/big; sync", config=config)  # fmt: skip
            raws.append(raw_copy(a / "instances" / "c" / "upper", b / f"raw-{run}"))
            print(f"run {run + 1}: raw tar | cat | tar + sync {raws[-1]:.2f} s", flush=True)
            moves.append(virtkit_move(a, config))
            vk(b, "delete", "--force", "c", config=config)
        report(args.size_mib, raws, moves)


def report(size: int, raws: list[float], moves: list[dict[str, float]]) -> None:
    raw = statistics.median(raws)
    total = statistics.median(m["total"] for m in moves)
    down = statistics.median(m["downtime"] for m in moves)
    def listed(values: list[float]) -> str:
        return ", ".join(f"{value:.2f}" for value in values)

    print(f"container with {size} MiB of random data, {len(raws)} runs (medians):")
    print(f"  raw copy of its layer   {raw:.2f} s  ({listed(raws)})")
    print(f"  virtkit move total      {total:.2f} s  ({listed([m['total'] for m in moves])})")
    print(f"  virtkit move downtime   {down:.2f} s  ({listed([m['downtime'] for m in moves])})")
    print(f"virtkit total / raw copy: {total / raw:.2f}x; downtime / raw copy: {down / raw:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=500)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    done = subprocess.run(["unshare", "--net", "--", sys.executable, __file__, "--inside", "--runs",
                           str(args.runs), "--size-mib", str(args.size_mib)], check=False)  # fmt: skip
    sys.exit(done.returncode)


if __name__ == "__main__":
    os.umask(0o022)
    main()
