"""How long a tiny VM takes to be ready through virtkit, against the identical QEMU command run by hand.

Run: .venv/bin/python benchmarks/vm_launch.py [--runs N]
- raw: the instance's saved QEMU argv (`virtkit show NAME --runtime --json`) started directly, timed
  until the guest writes VIRTKIT-READY to its readiness port; then killed;
- virtkit start: `virtkit start NAME --wait` of the same instance (same argv), then `stop --force`;
- virtkit launch: `virtkit launch tiny NAME --vm --wait` (creates the disk overlay too), then deleted.
Target (issue 4): virtkit within 1.15x of raw QEMU. Under TCG here; KVM goals are not measurable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIRTKIT = Path(sys.executable).parent / "virtkit"
MARKER = b"VIRTKIT-READY"


def vk(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VIRTKIT), "--root", str(root), *args], check=True, capture_output=True, text=True
    )


def timed_vk(root: Path, *args: str) -> float:
    start = time.perf_counter()
    vk(root, *args)
    return time.perf_counter() - start


def raw_run(argv: list[str], ready: Path, pidfile: Path, timeout: float = 60) -> float:
    ready.write_bytes(b"")
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while MARKER not in ready.read_bytes():
            if proc.poll() is not None or time.perf_counter() - start > timeout:
                raise RuntimeError(
                    f"raw QEMU did not get ready: {proc.stderr.read() if proc.stderr else ''!r}"
                )
            time.sleep(0.005)
        return time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        pidfile.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vk-bench-") as tmp:
        os.chmod(tmp, 0o711)  # as /var/lib/virtkit: QEMU runs as virtkit-qemu, the default path
        root = Path(tmp) / "root"
        vk(root, "image", "build", "tiny")
        vk(root, "create", "tiny", "bench", "--vm")
        argv = json.loads(vk(root, "show", "bench", "--runtime", "--json").stdout)["argv"]
        instance = root / "instances" / "bench"
        raw, start, launch = [], [], []
        for index in range(args.runs):
            raw.append(raw_run(argv, instance / "ready.log", instance / "pid"))
            start.append(timed_vk(root, "start", "bench", "--wait"))
            vk(root, "stop", "--force", "bench")
            launch.append(timed_vk(root, "launch", "tiny", f"l{index}", "--vm", "--wait"))
            vk(root, "delete", "--force", f"l{index}")
        vk(root, "delete", "--force", "bench")
    floor = statistics.median(raw)
    print(f"{'case (median of ' + str(args.runs) + ')':<32} {'seconds':>8} {'x raw':>7}")
    for name, samples in (
        ("raw qemu-system (same argv)", raw),
        ("virtkit start --wait", start),
        ("virtkit launch --wait", launch),
    ):
        print(f"{name:<32} {statistics.median(samples):>8.2f} {statistics.median(samples) / floor:>7.2f}")
    ok = statistics.median(launch) / floor <= 1.15
    print(f"launch within 1.15x of raw: {'yes' if ok else 'NO'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.umask(0o022)
    main()
