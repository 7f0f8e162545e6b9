"""Export of a VM whose disk holds 2 GiB of data, with zstd, against `zstd` of that disk alone.

Run: .venv/bin/python benchmarks/export.py [--size 2GiB] [--runs 3] [--dir /var/tmp/virtkit-bench-export]

A state root of its own gets the tiny image and a stopped VM with a `--disk` of SIZE; its root disk
is filled (qemu-img convert -n) with data that compresses like a real disk's: a quarter random
(already-compressed files), a quarter zeros (free space), half text. Then, in the same run and on
the same disk:

- raw: `zstd -q -3 -T0 -c root.qcow2 > FILE` (zstd as typed by hand, with all cores: the flags
  `virtkit export` gives its zstd), the same with `--no-check` (without zstd's content checksum,
  which zstd computes serially in its I/O thread: the fastest zstd there is here), and zstd's
  default (`-3`, one thread);
- virtkit: `virtkit export vm FILE.tar.zst` — the whole command: the CLI's start, the disk made
  standalone (here: its header rewritten on the way), the tiny image carried along, tar, zstd,
  the stored digest (the archive's bytes read back and hashed, but for the disk's own zstd run,
  which zstd's frame checksum covers: docs/backups.md), fsync, rename.

Prints the median wall time of each, the throughput (the disk file's bytes per second) and the
ratio of virtkit's throughput to zstd's (-T0, the same flags). Target (issue 7): at least 0.8.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

VIRTKIT = Path(sys.executable).parent / "virtkit"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from virtkit.units import format_size, parse_size  # noqa: E402

BLOCK = 1 << 20


def mixed_data(path: Path, size: int) -> None:
    """`size` bytes: per 4 MiB, one random, one zero, two text megabytes."""
    rng = random.Random(7)
    text = b"".join(b"%d lorem ipsum dolor sit amet, consectetur adipiscing elit %x\n" % (i, i * 7919)
                    for i in range(40_000))  # fmt: skip
    with open(path, "wb") as out:
        for index in range(size // BLOCK):
            kind = index % 4
            if kind == 0:
                out.write(os.urandom(BLOCK))
            elif kind == 1:
                out.seek(BLOCK, os.SEEK_CUR)
            else:
                start = rng.randrange(0, len(text) - BLOCK)
                out.write(text[start : start + BLOCK])
        out.truncate(size)


def run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="2GiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/virtkit-bench-export"))
    args = parser.parse_args()
    size = parse_size(args.size)
    ratio = 0.0
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    root = args.dir / "root"
    # As a user runs it: Python may cache bytecode (a PYTHONDONTWRITEBYTECODE=1 shell would have
    # virtkit compile every module it imports at each run: ~0.2 s of each export here).
    env = {**os.environ, "VIRTKIT_ROOT": str(root)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        subprocess.run([str(VIRTKIT), "image", "build", "tiny"], check=True, env=env, capture_output=True)
        create = [str(VIRTKIT), "create", "tiny", "vm", "--vm", "--disk", args.size]
        subprocess.run(create, check=True, env=env, stdout=subprocess.DEVNULL)
        data = args.dir / "data.raw"
        mixed_data(data, size)
        disk = root / "instances" / "vm" / "root.qcow2"
        fill = ["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(data), str(disk)]
        subprocess.run(fill, check=True)
        data.unlink()
        disk_bytes = disk.stat().st_size
        times: dict[str, list[float]] = {"zstd -T0": [], "zstd -T0 --no-check": [], "zstd (1 thread)": [],
                                         "virtkit export": []}  # fmt: skip
        sizes: dict[str, int] = {}
        for index in range(args.runs):
            for name, flags in (("zstd -T0", "-T0"), ("zstd -T0 --no-check", "-T0 --no-check"),
                                ("zstd (1 thread)", "")):  # fmt: skip
                out = args.dir / f"raw{index}.zst"
                subprocess.run(["sync"], check=True)
                script = f"zstd -q -3 {flags} -c {disk} > {out} && sync {out}"
                times[name].append(run(["sh", "-c", script], env))
                sizes[name] = out.stat().st_size
                out.unlink()
            out = args.dir / f"vm{index}.tar.zst"
            subprocess.run(["sync"], check=True)
            times["virtkit export"].append(run([str(VIRTKIT), "export", "vm", str(out)], env))
            sizes["virtkit export"] = out.stat().st_size
            out.unlink()
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(f"disk: {format_size(size)} virtual, {format_size(disk_bytes)} qcow2 file; runs: {args.runs}")
        print(f"{'':<20} {'median s':>9} {'MiB/s':>8} {'output':>10}")
        for name, seconds in medians.items():
            rate = disk_bytes / seconds / BLOCK
            print(f"{name:<20} {seconds:>9.2f} {rate:>8.0f} {format_size(sizes[name]):>10}")
        ratio = medians["zstd -T0"] / medians["virtkit export"]
        print(f"ratio to zstd (1 thread): {medians['zstd (1 thread)'] / medians['virtkit export']:.2f}")
        fastest = medians["zstd -T0 --no-check"] / medians["virtkit export"]
        print(f"ratio to zstd -T0 --no-check (no content checksum): {fastest:.2f}")
        verdict = "yes" if ratio >= 0.8 else "NO"
        print(f"throughput ratio (virtkit / zstd -T0): {ratio:.2f} (target >= 0.8: {verdict})")
    finally:
        subprocess.run([str(VIRTKIT), "delete", "--force", "vm"], env=env, capture_output=True, check=False)
        subprocess.run([str(VIRTKIT), "image", "delete", "tiny"], env=env, capture_output=True, check=False)
        shutil.rmtree(args.dir, ignore_errors=True)
    sys.exit(0 if ratio >= 0.8 else 1)


if __name__ == "__main__":
    main()
