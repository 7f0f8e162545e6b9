"""How fast the CLI starts: `virtkit --version` against the Python interpreter's own start-up.

Run: .venv/bin/python benchmarks/startup.py [--runs N]
Prints the median wall time of each and their ratio. Target (issue 2): virtkit --version < 150 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

VIRTKIT = Path(sys.executable).parent / "virtkit"


def median_wall(argv: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    cases = {
        "python3 -c pass (floor)": [sys.executable, "-c", "pass"],
        "virtkit --version": [str(VIRTKIT), "--version"],
        "virtkit --help": [str(VIRTKIT), "--help"],
    }
    results = {name: median_wall(argv, args.runs) for name, argv in cases.items()}
    floor = results["python3 -c pass (floor)"]
    print(f"{'command':<28} {'median ms':>10} {'x floor':>8}")
    for name, seconds in results.items():
        print(f"{name:<28} {seconds * 1000:>10.1f} {seconds / floor:>8.2f}")
    target = results["virtkit --version"] < 0.150
    print(f"virtkit --version under 150 ms: {'yes' if target else 'NO'}")
    sys.exit(0 if target else 1)


if __name__ == "__main__":
    main()
