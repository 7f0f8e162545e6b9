"""100 containers launched one after another and left running, then deleted: containers per second
for each phase, and the host memory each running container costs beside its own processes.

Run: .venv/bin/python benchmarks/container_many.py [--count N]   (podman: `bash scripts/dev.sh bench`)
- virtkit: `virtkit launch tiny cN --container` (detached: busybox init, whose console job sleeps),
  then `virtkit delete --force cN`;
- podman: `podman run -d` of the same image tree (`--rootfs DIR:O`) running `sleep`, then
  `podman rm -f` (runc, and the ulimits podman needs here: see container_run.py);
- memory per container: the proportional set size (PSS, /proc/PID/smaps_rollup) of everything on the
  host that runs for the container but is not the container — conmon for both (runc does not stay) —
  summed and divided by N. Target (issue 5): at most 2 MiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIRTKIT = Path(sys.executable).parent / "virtkit"
MiB = 1024 * 1024


def pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def monitors(marker: str) -> list[int]:
    """PIDs of the conmon processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"conmon") and any(marker.encode() in a for a in args):
            found.append(int(entry.name))
    return found


def phase(commands: list[list[str]], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    for argv in commands:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:5])}... failed: {done.stderr.strip()}")
    return time.perf_counter() - start


def podman_cases(lower: Path, count: int) -> tuple[list[list[str]], list[list[str]]]:
    podman = shutil.which("podman")
    if podman is None:
        return [], []
    base = [podman, "--runtime", "runc"]
    run = [
        [
            *base,
            "run",
            "-d",
            "--name",
            f"vkbench{i}",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--rootfs",
            f"{lower}:O",
            "/bin/sleep",
            "3600",
        ]
        for i in range(count)
    ]
    return run, [[*base, "rm", "-f", "-t", "0", f"vkbench{i}"] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    from virtkit.store import peek

    n = args.count
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="vk-bench-") as tmp:
        root = Path(tmp) / "root"
        # As a user runs it: Python may cache bytecode (a PYTHONDONTWRITEBYTECODE=1 shell would
        # have virtkit compile every module it imports at each run).
        env = {**os.environ, "VIRTKIT_ROOT": str(root)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([str(VIRTKIT), "image", "build", "tiny"], check=True, capture_output=True, env=env)
        image = peek.image(root, "tiny")
        assert image is not None
        lower = root / "images" / image["fingerprint"] / image["files"]["rootfs"]
        names = [f"c{i}" for i in range(n)]
        try:
            up = phase([[str(VIRTKIT), "launch", "tiny", name, "--container"] for name in names], env)
            memory = sum(pss(pid) for pid in monitors(str(root))) / n
            down = phase([[str(VIRTKIT), "delete", "--force", name] for name in names], env)
        finally:
            for name in names:
                subprocess.run(
                    [str(VIRTKIT), "delete", "--force", name], capture_output=True, env=env, check=False
                )
        rows.append(("virtkit launch / delete", n / up, n / down, memory))
        run, remove = podman_cases(lower, n)
        if run:
            try:
                up = phase(run)
                memory = sum(pss(pid) for pid in monitors("vkbench")) / n
                down = phase(remove)
            finally:
                for argv in remove:
                    subprocess.run(argv, capture_output=True, check=False)
            rows.append(("podman run -d / rm -f", n / up, n / down, memory))
    print(f"{n} containers {'':<22} {'launch/s':>9} {'delete/s':>9} {'MiB each':>9}")
    for name, launch, delete, each in rows:
        print(f"{name:<34} {launch:>9.1f} {delete:>9.1f} {each / MiB:>9.2f}")
    if len(rows) > 1:
        print(
            f"virtkit / podman: launch {rows[0][1] / rows[1][1]:.2f}x as fast, "
            f"delete {rows[0][2] / rows[1][2]:.2f}x as fast"
        )
    else:
        print("podman is not installed: `bash scripts/dev.sh bench` installs it")
    ok = rows[0][3] <= 2 * MiB
    print(f"memory per container at most 2 MiB: {'yes' if ok else 'NO'} ({rows[0][3] / MiB:.2f} MiB)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.umask(0o022)
    main()
