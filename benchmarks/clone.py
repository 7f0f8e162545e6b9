"""Clones (issue 7): a linked clone of a VM whose disk holds 1 GiB against one holding 8 GiB (target:
under 100 ms and independent of the size), a full clone's throughput against `cp --sparse=always`
of the same files, and N linked-clone VMs of one tiny image started in parallel.

Run: .venv/bin/python benchmarks/clone.py [--sizes 1,8] [--repeats 3] [--parallel 20]
All in a temporary state root (the tiny image is built there; the download cache makes it quick):
- each source VM is made with `virtkit create tiny dN --vm --disk SIZE+1GiB`, its root disk filled
  with N GiB of data by `qemu-io` (256 MiB pattern writes), untimed;
- full: `Copies.copy(src, dst, full=True)` timed in the process (the CLI's ~0.2 s start-up aside;
  one `virtkit copy --full` run through the CLI is timed too), against `cp --sparse=always` of the
  files its content lies in (root.qcow2 and the image's disk), both with those files in the page
  cache; throughput ratio = cp's time over virtkit's;
- linked: `Copies.copy(src, dst)` timed, each one freezing the source's top again (a 64 KiB write
  into it before each, so there is something to freeze); raw: the two `qemu-img create -b -u`
  and the rename it comes down to, timed by hand on a scratch file; one CLI run too;
- parallel: a tiny VM written to and stopped, frozen once by its first clone, the next clones
  sharing that layer; then `virtkit start vmN --wait` for all of them at once, until the last returns.
Everything made is removed on the way out. Exits 1 if a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIRTKIT = Path(sys.executable).parent / "virtkit"
GiB = 1 << 30
CHUNK = 256 << 20


def vk(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIRTKIT_ROOT": str(root)}
    done = subprocess.run([str(VIRTKIT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"virtkit {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def fill(disk: Path, size: int) -> None:
    commands = []
    for offset in range(0, size, CHUNK):
        commands += ["-c", f"write -q -P 0x5a {offset} {min(CHUNK, size - offset)}"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(disk)], check=True, capture_output=True)


def warm(*files: Path) -> None:
    for path in files:
        with path.open("rb") as handle:
            while handle.read(16 << 20):
                pass


def copies(root: Path):  # type: ignore[no-untyped-def]  # the library, as a script uses it
    from virtkit.ops.copy import Copies
    from virtkit.store import open_store

    return Copies(root, open_store(root))


def timed(step, *args, **kwargs) -> float:  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    step(*args, **kwargs)
    return time.perf_counter() - began


def raw_linked(scratch: Path, size: int) -> float:
    """What a linked clone comes down to, by hand: a rename and two `qemu-img create -b -u`."""
    base = scratch / "raw-top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), str(size)], check=True)
    began = time.perf_counter()
    layer = scratch / "raw-layer.qcow2"
    os.rename(base, layer)
    for name in ("raw-a.qcow2", "raw-b.qcow2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(layer), "-u",
                        str(scratch / name), str(size)], check=True)  # fmt: skip
    spent = time.perf_counter() - began
    for name in ("raw-layer.qcow2", "raw-a.qcow2", "raw-b.qcow2"):
        (scratch / name).unlink()
    return spent


def one_size(root: Path, scratch: Path, gib: int, repeats: int) -> dict[str, object]:
    name = f"d{gib}"
    vk(root, "create", "tiny", name, "--vm", "--disk", f"{gib + 1}GiB")
    disk = root / "instances" / name / "root.qcow2"
    began = time.perf_counter()
    fill(disk, gib * GiB)
    filled = time.perf_counter() - began
    image_disk = Path(json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)],
                                                capture_output=True, text=True, check=True).stdout)
                      ["full-backing-filename"])  # fmt: skip
    files = [disk, image_disk]
    warm(*files)
    cp_s = timed(subprocess.run, ["cp", "--sparse=always", *map(str, files), str(scratch)], check=True)
    for path in files:
        (scratch / path.name).unlink()
    lib = copies(root)
    full_s = timed(lib.copy, name, f"f{gib}", full=True)
    vk(root, "delete", f"f{gib}")
    cli_began = time.perf_counter()
    vk(root, "copy", name, f"f{gib}", "--full")
    full_cli_s = time.perf_counter() - cli_began
    vk(root, "delete", f"f{gib}")
    linked = []
    for index in range(repeats):
        if index:  # something new in the source's top, so that this clone freezes it again
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -q -P 0x11 0 64k", str(disk)], check=True)
        linked.append(timed(lib.copy, name, f"l{gib}x{index}"))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -q -P 0x11 0 64k", str(disk)], check=True)
    cli_began = time.perf_counter()
    vk(root, "copy", name, f"l{gib}cli")
    linked_cli_s = time.perf_counter() - cli_began
    data = gib * GiB  # what qemu-io wrote; the image disk adds its few MiB
    for index in range(repeats):
        vk(root, "delete", "--force", f"l{gib}x{index}")
    vk(root, "delete", "--force", f"l{gib}cli")
    vk(root, "delete", "--force", name)
    return {
        "gib": gib, "fill_s": filled, "data_bytes": data, "cp_s": cp_s, "full_s": full_s,
        "full_cli_s": full_cli_s, "full_ratio": cp_s / full_s, "full_mib_s": data / full_s / (1 << 20),
        "cp_mib_s": data / cp_s / (1 << 20), "linked_s": linked, "linked_median_s": statistics.median(linked),
        "linked_cli_s": linked_cli_s, "raw_linked_s": raw_linked(scratch, (gib + 1) * GiB),
    }  # fmt: skip


def parallel(root: Path, count: int) -> dict[str, object]:
    vk(root, "launch", "tiny", "gold", "--vm", "--wait")
    vk(root, "exec", "gold", "--", "sh", "-c", "echo gold > /root/gold; sync")
    vk(root, "stop", "gold")
    names = [f"vm{index}" for index in range(count)]
    lib = copies(root)
    clone_s = [timed(lib.copy, "gold", name) for name in names]
    env = {**os.environ, "VIRTKIT_ROOT": str(root)}
    began = time.perf_counter()
    procs = [subprocess.Popen([str(VIRTKIT), "start", name, "--wait"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in names]  # fmt: skip
    failed = [name for name, proc in zip(names, procs, strict=True) if proc.wait(timeout=900) != 0]
    total = time.perf_counter() - began
    layers = {json.dumps(json.loads(vk(root, "show", name, "--json").stdout)["layers"]) for name in names}
    for name in [*names, "gold"]:
        vk(root, "delete", "--force", name)
    return {"count": count, "clone_s": clone_s, "start_all_s": total, "failed": failed,
            "distinct_chains": len(layers)}  # fmt: skip


def _line(row: dict[str, object]) -> str:
    ms = {key: float(row[key]) * 1000 for key in ("linked_median_s", "raw_linked_s", "linked_cli_s")}  # type: ignore[arg-type]
    each = ", ".join(f"{s * 1000:.0f}" for s in row["linked_s"])  # type: ignore[attr-defined]
    return (
        f"{row['gib']} GiB: linked {each} ms (median {ms['linked_median_s']:.0f} ms; raw qemu-img "
        f"{ms['raw_linked_s']:.0f} ms; CLI {ms['linked_cli_s']:.0f} ms) | full {row['full_s']:.2f} s "
        f"({row['full_mib_s']:.0f} MiB/s; CLI {row['full_cli_s']:.2f} s) vs cp --sparse=always "
        f"{row['cp_s']:.2f} s ({row['cp_mib_s']:.0f} MiB/s): ratio {row['full_ratio']:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,8", help="GiB of data in each source's disk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=20, help="0: skip the parallel launch")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="virtkit-clone-bench-", dir="/var/tmp"))
    os.chmod(work, 0o711)
    root, scratch = work / "root", work / "scratch"
    scratch.mkdir()
    try:
        vk(root, "image", "build", "tiny")
        results = [one_size(root, scratch, int(gib), args.repeats) for gib in args.sizes.split(",")]
        for row in results:
            print(_line(row))
        report: dict[str, object] = {"sizes": results}
        if args.parallel:
            batch = parallel(root, args.parallel)
            report["parallel"] = batch
            clone_ms = statistics.median(batch["clone_s"]) * 1000  # type: ignore[arg-type]
            print(
                f"{batch['count']} linked-clone VMs: clones {clone_ms:.0f} ms each (median), started "
                f"together in {batch['start_all_s']:.1f} s; failed: {batch['failed'] or 'none'}"
            )
        print(json.dumps(report, indent=2))
        return 1 if report.get("parallel", {}).get("failed") else 0  # type: ignore[union-attr]
    finally:
        listed = subprocess.run([str(VIRTKIT), "list", "--json"], capture_output=True, text=True,
                                env={**os.environ, "VIRTKIT_ROOT": str(root)}, check=False)  # fmt: skip
        for instance in json.loads(listed.stdout or "[]"):
            vk(root, "delete", "--force", instance["name"])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
