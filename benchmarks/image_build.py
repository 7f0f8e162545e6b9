"""How fast `virtkit image build tiny` is, cold (empty cache) and warm, against the raw tools doing
the unavoidable part of the same work in the same run.

Run: .venv/bin/python benchmarks/image_build.py
- cold: virtkit with an empty VIRTKIT_CACHE, against raw `apt-get update` + `apt-get download` +
  `dpkg-deb -x` of the same kernel package (through the same private apt root's options);
- warm: virtkit with a warm cache, against raw `mkfs.ext4 -d` + `qemu-img convert` of the same
  root filesystem tree (the part a warm rebuild cannot skip).
Targets (issue 3): cold under 90 s, warm under 10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIRTKIT = Path(sys.executable).parent / "virtkit"


def timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=cwd)
    return time.perf_counter() - start


def build(root: Path, cache: Path) -> tuple[float, dict[str, object]]:
    env = {**os.environ, "VIRTKIT_CACHE": str(cache)}
    start = time.perf_counter()
    out = subprocess.run(
        [str(VIRTKIT), "--root", str(root), "image", "build", "tiny", "--json"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return time.perf_counter() - start, json.loads(out.stdout)[0]


def raw_kernel_fetch(cache: Path, package: str, work: Path) -> float:
    from virtkit.images.debcache import AptRoot

    apt = AptRoot(cache, "amd64")
    options = apt.options()
    name, version = package.split()
    start = time.perf_counter()
    subprocess.run(["apt-get", *options, "update", "-q"], check=True, capture_output=True)
    subprocess.run(
        ["apt-get", *options, "download", f"{name}={version}"], check=True, capture_output=True, cwd=work
    )
    deb = next(work.glob("*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True)
    return time.perf_counter() - start


def raw_disk(rootfs: Path, work: Path) -> float:
    raw, qcow = work / "disk.raw", work / "disk.qcow2"
    start = time.perf_counter()
    subprocess.run(["mkfs.ext4", "-q", "-d", str(rootfs), "-L", "virtkit-root", str(raw), "64M"], check=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vk-bench-") as tmp:
        base = Path(tmp)
        cold_cache = base / "cold-cache"
        cold_cache.mkdir()
        cold, image = build(base / "root-cold", cold_cache)
        warm, image = build(base / "root-warm", cold_cache)
        package = str(image["properties"]["kernel_package"])  # type: ignore[index]
        raw_cache = base / "raw-cache"
        (raw_cache / "apt").mkdir(parents=True)
        (base / "raw-fetch").mkdir()
        try:
            from virtkit.images.debcache import AptRoot

            AptRoot(raw_cache, "amd64").prepare()
        except Exception as error:  # the bench still reports virtkit's own figures
            print(f"(could not prepare a raw apt root: {error})")
        raw_cold = raw_kernel_fetch(raw_cache, package, base / "raw-fetch")
        rootfs = base / "root-warm" / "images" / str(image["fingerprint"]) / "rootfs"
        (base / "raw-disk").mkdir()
        raw_warm = raw_disk(rootfs, base / "raw-disk")
    print(f"{'case':<34} {'virtkit s':>10} {'raw s':>8} {'ratio':>7}")
    print(f"{'tiny cold (empty cache)':<34} {cold:>10.2f} {raw_cold:>8.2f} {cold / raw_cold:>7.2f}")
    print(f"{'tiny warm (cached kernel)':<34} {warm:>10.2f} {raw_warm:>8.2f} {warm / raw_warm:>7.2f}")
    ok = cold < 90 and warm < 10
    print(f"targets (cold < 90 s, warm < 10 s): {'met' if ok else 'MISSED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
