"""An imported OCI image runs its own entrypoint, with its env, workdir and user; and the container
settings beyond CPUs and memory hold by behaviour: --cpu-set, --disk-bandwidth, --privileged."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import tiny  # noqa: F401  (the fixture)
from tests.unit.images.ocibuild import OCI_CONFIG, OCI_MANIFEST, digest_of, oci_layout, put_blob
from tests.unit.storage.tarbuild import directory, reg, symlink, tar_bytes

BUSYBOX = Path("/bin/busybox")  # busybox-static: what the tiny image is made of too
ENTRYPOINT = ["/bin/sh", "-c", 'echo "$GREETING from $(pwd) as $(id -u):$(id -g)"; exit 3', "sh"]


def _app_layout(root: Path) -> Path:
    layer = tar_bytes([
        directory("bin"), reg("bin/busybox", BUSYBOX.read_bytes(), mode=0o755),
        *(symlink(f"bin/{tool}", "busybox") for tool in ("sh", "echo", "id", "pwd", "cat", "sleep")),
        directory("etc"), reg("etc/passwd", b"root:x:0:0::/:/bin/sh\napp:x:1000:1000::/srv:/bin/sh\n"),
        reg("etc/group", b"root:x:0:\napp:x:1000:\nstaff:x:50:\n"), directory("srv", uid=1000),
    ])  # fmt: skip
    run = {"Entrypoint": ENTRYPOINT, "Env": ["PATH=/bin", "GREETING=hello"], "WorkingDir": "/srv",
           "User": "app:staff"}  # fmt: skip
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": run,
                         "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}}).encode()  # fmt: skip
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": put_blob(root, config, OCI_CONFIG),
                "layers": [put_blob(root, layer, "application/vnd.oci.image.layer.v1.tar")]}  # fmt: skip
    desc = put_blob(root, json.dumps(manifest).encode(), OCI_MANIFEST)
    return oci_layout(root, [("v1", {**desc, "platform": {"architecture": "amd64", "os": "linux"}})])


@pytest.fixture
def app(tiny: Cli, tmp_path: Path) -> Cli:  # noqa: F811
    imported = tiny("image", "import", str(_app_layout(tmp_path / "layout")), "--name", "app", timeout=120)
    assert imported.returncode == 0, imported.stderr
    return tiny


def test_an_imported_oci_image_runs_its_entrypoint(app: Cli, state_root: Path) -> None:
    done = app("run", "--rm", "app")
    assert (done.returncode, done.stdout) == (3, "hello from /srv as 1000:50\n"), done.stderr
    overridden = app(
        "run", "--rm", "-e", "GREETING=hi", "app", "--", "/bin/sh", "-c", 'echo "$GREETING $(id -u)"'
    )
    assert (overridden.returncode, overridden.stdout) == (0, "hi 1000\n"), overridden.stderr

    # Detached, as an application container under conmon: its output is its log, its status the exit.
    assert app("launch", "app", "a1", "--container").returncode == 0
    deadline = time.monotonic() + 30
    while (
        json.loads(app("show", "a1", "--json").stdout)["state"] == "running" and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    shown = json.loads(app("show", "a1", "--json").stdout)
    assert shown["state"] == "error" and "status 3" in shown["reason"], shown
    assert app("logs", "a1").stdout == "hello from /srv as 1000:50\n"
    assert app("delete", "a1").returncode == 0


def test_cpu_set_pins_the_container(tiny: Cli) -> None:  # noqa: F811
    done = tiny("run", "--rm", "--cpu-set", "0", "tiny", "--", "cat", "/proc/self/status")
    allowed = next(line for line in done.stdout.splitlines() if line.startswith("Cpus_allowed_list:"))
    assert allowed.split()[1] == "0", done.stdout
    cpus = os.cpu_count() or 1
    assert_clear_error(tiny("run", "--rm", "--cpu-set", str(cpus), "tiny", "--", "true"), 125, "no CPU")
    assert_clear_error(tiny("run", "--rm", "--cpu-set", "1-0", "tiny", "--", "true"), 125, "invalid CPU set")
    assert_clear_error(tiny("launch", "tiny", "c1", "--container", "--cpu-set", "x"), 2, "invalid CPU set")


def test_disk_bandwidth_throttles_direct_writes(tiny: Cli) -> None:  # noqa: F811
    write = ["dd", "if=/dev/zero", "of=/written", "bs=1M", "count=8", "oflag=direct"]
    began = time.monotonic()
    done = tiny("run", "--rm", "--name", "slow", "tiny", "--", *write)
    free = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert tiny("launch", "tiny", "c2", "--container", "--disk-bandwidth", "2MiB", "--wait").returncode == 0
    began = time.monotonic()
    throttled = tiny("exec", "c2", "--", *write, timeout=60)
    slow = time.monotonic() - began
    assert throttled.returncode == 0, throttled.stderr
    assert slow >= 3.0 > free, (slow, free)  # 8 MiB at 2 MiB/s: about 4 s
    assert_clear_error(
        tiny("launch", "tiny", "c3", "--container", "--disk-iops", "0"), 2, "invalid disk IOPS"
    )


def test_privileged_is_opt_in_and_said(tiny: Cli) -> None:  # noqa: F811
    default = tiny("run", "--rm", "tiny", "--", "sh", "-c", "grep -E '^(CapEff|Seccomp):' /proc/self/status")
    assert "Seccomp:\t2" in default.stdout, default.stdout
    launched = tiny("launch", "tiny", "p1", "--container", "--privileged", "--wait")
    assert launched.returncode == 0, launched.stderr
    assert "p1 is privileged" in launched.stderr and "root in it is root on the host" in launched.stderr
    status = tiny("exec", "p1", "--", "cat", "/proc/self/status").stdout
    assert "Seccomp:\t0" in status, status
    assert tiny("exec", "p1", "--", "cat", "/proc/self/uid_map").stdout.split() == ["0", "0", "4294967295"]
    mounted = tiny("exec", "p1", "--", "sh", "-c", "mount -t tmpfs t /mnt && echo mounted")
    assert mounted.stdout == "mounted\n", mounted.stderr
