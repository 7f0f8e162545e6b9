"""Stacks (issue 10): `virtkit apply` of 50 tiny containers on one network until all run, then
`virtkit scale --count 0`, side by side with a shell loop of `podman run -d` / `podman rm -f` of
the same 50 in the same run; and `apply` of 10 tiny VMs until every guest is ready.

Run: .venv/bin/python benchmarks/stack.py [--count 50] [--vms 10] [--parallel 4]
     (podman: `bash scripts/dev.sh bench` installs it)

Everything runs in a fresh network namespace of its own (`unshare --net`), so the stack's bridge,
firewall rules and dnsmasq, and podman's network, never touch this machine's. A state root of its
own gets the tiny image (built untimed). Phases, each timed from the command's start to its end:
- virtkit up: `virtkit apply -f stack.yaml` (a network, a group of COUNT containers on it); every
  container is running when it returns;
- virtkit down: `virtkit scale web --count 0` (each stopped gracefully, then deleted);
- podman up / down: `podman run -d --network bridge` of the same image tree (--rootfs DIR:O,
  `sleep`), one after another as a shell loop would, then `podman rm -f -t 0` one after another;
- VMs: `virtkit apply` of a group of VMS tiny VMs with `wait: true` (each guest says it is ready;
  each root disk a qcow2 overlay on the image's: a linked clone), then `scale --count 0`.
Prints wall times, instances per second and virtkit's speed relative to podman's loop (goal: > 1).
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

STACK = """\
name: bench
networks:
  - name: benchnet
    subnet: 10.77.0.0/22
groups:
  - name: web
    image: tiny
    type: container
    count: {count}
    memory: 64MiB
    networks: [benchnet]
"""

VM_STACK = """\
name: benchvm
groups:
  - name: vm
    image: tiny
    type: vm
    count: {count}
    memory: 256MiB
    wait: true
"""


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return took


def loop(commands: list[list[str]]) -> float:
    start = time.perf_counter()
    for argv in commands:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:5])} failed: {done.stderr.strip()}")
    return time.perf_counter() - start


def podman(lower: Path, count: int) -> tuple[float, float] | None:
    found = shutil.which("podman")
    if found is None:
        return None
    base = [found, "--runtime", "runc"]
    limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
    run = [[*base, "run", "-d", "--name", f"vkstack{i}", "--network", "bridge", *limits,
            "--rootfs", f"{lower}:O", "/bin/sleep", "3600"] for i in range(count)]  # fmt: skip
    remove = [[*base, "rm", "-f", "-t", "0", f"vkstack{i}"] for i in range(count)]
    try:
        return loop(run), loop(remove)
    finally:
        for argv in remove:
            subprocess.run(argv, capture_output=True, check=False)


def inside() -> None:
    """The benchmark proper, in its own network namespace."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--vms", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args(sys.argv[2:])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from virtkit.store import peek

    with tempfile.TemporaryDirectory(prefix="vk-bench-stack-") as tmp:
        os.chmod(tmp, 0o711)  # dnsmasq and QEMU drop privileges: they must reach the root
        root = Path(tmp) / "root"
        env = {**os.environ, "VIRTKIT_ROOT": str(root)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as a user runs it: bytecode cached
        subprocess.run([str(VIRTKIT), "image", "build", "tiny"], check=True, capture_output=True, env=env)
        image = peek.image(root, "tiny")
        assert image is not None
        lower = root / "images" / image["fingerprint"] / image["files"]["rootfs"]
        stack = Path(tmp) / "bench.yaml"
        stack.write_text(STACK.format(count=args.count))
        vms = Path(tmp) / "benchvm.yaml"
        vms.write_text(VM_STACK.format(count=args.vms))
        par = ["--parallel", str(args.parallel)]
        try:
            up = timed([str(VIRTKIT), "apply", "-f", str(stack), *par], env)
            down = timed([str(VIRTKIT), "scale", "web", "--count", "0", *par], env)
            raw = podman(lower, args.count)
            vm_up = timed([str(VIRTKIT), "apply", "-f", str(vms), *par], env) if args.vms else 0.0
            vm_down = timed([str(VIRTKIT), "scale", "vm", "--count", "0", *par], env) if args.vms else 0.0
        finally:
            for path in (stack, vms):
                subprocess.run([str(VIRTKIT), "destroy", "-f", str(path)], capture_output=True, env=env,
                               check=False)  # fmt: skip
    n = args.count
    print(f"{n} containers on one network, --parallel {args.parallel}")
    print(f"{'':<34} {'up (s)':>8} {'down (s)':>9} {'up/s':>7} {'down/s':>7}")
    print(f"{'virtkit apply / scale --count 0':<34} {up:>8.2f} {down:>9.2f} {n / up:>7.1f} {n / down:>7.1f}")
    if raw is not None:
        print(f"{'podman run -d / rm -f (loop)':<34} {raw[0]:>8.2f} {raw[1]:>9.2f} {n / raw[0]:>7.1f} "
              f"{n / raw[1]:>7.1f}")  # fmt: skip
        print(f"virtkit / podman loop: up {raw[0] / up:.2f}x as fast, down {raw[1] / down:.2f}x as fast")
    else:
        print("podman is not installed: `bash scripts/dev.sh bench` installs it")
    if args.vms:
        print(f"{args.vms} tiny VMs (linked clones of the image), ready: apply {vm_up:.2f} s "
              f"({args.vms / vm_up:.2f}/s), scale --count 0 {vm_down:.2f} s")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        inside()
        return
    done = subprocess.run(["unshare", "--net", "--", sys.executable, __file__, "--inside", *sys.argv[1:]],
                          check=False)  # fmt: skip
    sys.exit(done.returncode)


if __name__ == "__main__":
    os.umask(0o022)
    main()
