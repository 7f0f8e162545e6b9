"""Bad input to containers, as a user types it: a missing image, invalid limits, hostile names, a
name that is taken, a command the image does not have. Each is a clear error (one or two lines,
the right exit code, no traceback), and a failed launch leaves nothing behind: not listed, no
instance directory, nothing mounted under the state root, no cgroup, no runtime state, no monitor."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import VIRTKIT, Cli
from tests.e2e.test_cli import assert_clear_error
from tests.e2e.test_vm_lifecycle import state_of
from tests.permissions import reachable

# Names distinct enough that another test's containers (cgroups are host-wide) cannot be taken for ours.
BAD = "badin-x1"
TAKEN = "badin-c1"

BAD_LAUNCHES = [
    # (launch options after IMAGE NAME, exit code, what the error says)
    (("--memory", "10"), 2, "memory 10B is too small: at least 32MiB"),
    (("--memory", "-5"), 2, "invalid memory size '-5': sizes cannot be negative"),
    (("--memory", "lots"), 2, "invalid memory size 'lots'"),
    (("--memory", "100000GiB"), 2, "more than this host"),
    (("--cpus", "0"), 2, "invalid CPU count 0: must be more than 0"),
    (("--cpus", "-1"), 2, "invalid CPU count -1: must be more than 0"),
    (("--processes", "0"), 2, "invalid process limit '0'"),
    (("--processes", "abc"), 2, "invalid process limit 'abc'"),
    (("--processes", "-3"), 2, "invalid process limit '-3'"),
    (("--processes", "99999999"), 2, "invalid process limit '99999999'"),
]

MISSING = ("nosuchcmd", "/bin/nosuchcmd", "/nosuch/dir/cmd")

HOSTILE_NAMES = [
    ("../x", "may only hold a-z, 0-9 and '-'"),
    ("a/b", "may only hold a-z, 0-9 and '-'"),
    ("../../../../etc", "may only hold a-z, 0-9 and '-'"),
    ("a" * 200, "longer than 63 characters"),
    ("-rf", "must start with a letter"),
    ("café", "may only hold a-z, 0-9 and '-'"),
    ("naïve-ü", "may only hold a-z, 0-9 and '-'"),
    ("a b", "may only hold a-z, 0-9 and '-'"),
    ("x;rm -rf", "may only hold a-z, 0-9 and '-'"),
    ("", "it is empty"),
    (".", "may only hold a-z, 0-9 and '-'"),
    ("C1", "names are lowercase"),
]


def assert_no_trace(state_root: Path, name: str) -> None:
    """No trace of instance `name` on the host: no directory, no mount, cgroup, runtime state or
    monitor (a cgroup or state directory is NAME.UUID8; a monitor names the instance directory).
    Whether it is registered, `virtkit list` tells: checked once after the attempts, since no
    failed attempt could unregister what an earlier one left."""
    instances = state_root / "instances"
    assert not (instances / name).exists() and not (instances / name).is_symlink()
    mounts = Path("/proc/self/mounts").read_text().split()
    assert not [m for m in mounts if m == str(instances / name) or m.startswith(f"{instances / name}/")]
    prefix = f"{name}."
    cgroups = [d for d in Path("/sys/fs/cgroup").glob("*/virtkit/*") if d.name.startswith(prefix)]
    assert cgroups == []
    states = [d for d in (state_root / "run").glob("*/*") if d.name.startswith(prefix)]
    assert states == []
    mark = f"{instances / name}/".encode()
    monitors = [p for p in Path("/proc").glob("[0-9]*/cmdline") if mark in _read(p)]
    assert monitors == []


@dataclass
class Host:
    """A state root with the tiny image (built once for the module: under load a build takes 10 s)."""

    virtkit: Cli
    root: Path

    def names(self) -> list[str]:
        listed = self.virtkit("list", "--json")
        assert listed.returncode == 0, listed.stderr
        return [instance["name"] for instance in json.loads(listed.stdout)]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = reachable(tmp_path_factory.mktemp("bad-input") / "root")

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VIRTKIT_ROOT": str(root)}
        return subprocess.run([str(VIRTKIT), *args], capture_output=True, text=True, timeout=timeout,
                              env=env, check=False)  # fmt: skip

    built = run("image", "build", "tiny", "--json", timeout=300)
    assert built.returncode == 0, built.stderr
    made = Host(run, root)
    try:
        yield made
    finally:
        for name in made.names():
            run("delete", "--force", name, timeout=60)
        assert not [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(root) in line]


@pytest.fixture(scope="module")
def taken(host: Host) -> dict[str, object]:
    """A running container named TAKEN; what `show` said of it just after it started."""
    launched = host.virtkit("launch", "tiny", TAKEN, "--container", "--wait", timeout=120)
    assert launched.returncode == 0, launched.stderr
    return state_of(host.virtkit, TAKEN)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def test_bad_launches_are_clear_and_leave_nothing(host: Host) -> None:
    virtkit, root = host.virtkit, host.root
    missing = virtkit("launch", "nosuchimage", BAD, "--container")
    assert_clear_error(missing, 1, "image 'nosuchimage' not found", "virtkit image list")
    assert_no_trace(root, BAD)

    for options, code, needle in BAD_LAUNCHES:
        result = virtkit("launch", "tiny", BAD, "--container", *options)
        assert_clear_error(result, code, needle)
        assert_no_trace(root, BAD)

    # A CFS quota under 1 ms (the kernel refuses it) or above the host's CPUs: refused up front.
    for cpus in ("0.001", str((os.cpu_count() or 1) + 1)):
        result = virtkit("launch", "tiny", BAD, "--container", "--cpus", cpus)
        assert_clear_error(result, 2, "invalid CPU share", "from 0.01 to")
        assert_no_trace(root, BAD)
    assert BAD not in host.names()


def test_hostile_names_are_refused(host: Host) -> None:
    virtkit, root = host.virtkit, host.root
    before = sorted(os.listdir(root.parent))
    for name, needle in HOSTILE_NAMES:
        # After `--`, as a user must type a name that starts with '-'.
        result = virtkit("launch", "tiny", "--container", "--", name)
        assert_clear_error(result, 2, "invalid instance name", needle)
        assert_no_trace(root, name)
    assert not (root / "instances").exists() or set(os.listdir(root / "instances")) <= {TAKEN}
    assert not (root / "x").exists() and sorted(os.listdir(root.parent)) == before  # no ../x made

    plain = virtkit("launch", "tiny", "-rf", "--container")  # without `--`: an option to click
    assert plain.returncode == 2 and "No such option" in plain.stderr, plain.stderr
    assert "Traceback" not in plain.stderr and plain.stdout == ""
    assert set(host.names()) <= {TAKEN}


def test_name_clash_leaves_the_first_untouched(host: Host, taken: dict[str, object]) -> None:
    virtkit, root = host.virtkit, host.root
    for options in (("--container",), ("--vm",), ("--container", "--memory", "64MiB")):
        assert_clear_error(
            virtkit("launch", "tiny", TAKEN, *options), 1, f"instance '{TAKEN}' already exists"
        )
    assert_clear_error(virtkit("launch", "nosuchimage", TAKEN, "--container"), 1)  # either error, clearly
    after = state_of(virtkit, TAKEN)
    assert (after["uuid"], after["state"], after["pid"]) == (taken["uuid"], "running", taken["pid"])
    assert host.names() == [TAKEN]
    runtime_states = [d.name for d in (root / "run").glob("*/*") if d.is_dir()]
    assert [name.split(".")[0] for name in runtime_states] == [TAKEN], runtime_states
    assert virtkit("exec", TAKEN, "--", "true").returncode == 0


def test_missing_commands_exit_127(host: Host, taken: dict[str, object]) -> None:
    virtkit = host.virtkit
    for command in MISSING:
        missing = virtkit("exec", TAKEN, "--", command, "--flag")
        assert missing.returncode == 127, missing.stderr
        assert f"Error: {command}: command not found in" in missing.stderr, missing.stderr
        assert "Traceback" not in missing.stderr and missing.stdout == ""
    # The container's own shell says so itself, with the same code.
    shell = virtkit("exec", TAKEN, "--", "sh", "-c", "nosuchcmd")
    assert (shell.returncode, shell.stderr) == (127, "sh: nosuchcmd: not found\n")
    assert_clear_error(virtkit("exec", "badin-none", "--", "true"), 1, "instance 'badin-none' not found")
    for argv in (("exec", TAKEN), ("exec", TAKEN, "--")):  # no command at all: a usage error
        usage = virtkit(*argv)
        assert usage.returncode == 2 and "Traceback" not in usage.stderr, usage.stderr
    assert state_of(virtkit, TAKEN)["state"] == "running"


def test_a_missing_command_is_one_clear_error(host: Host, taken: dict[str, object]) -> None:
    assert_clear_error(host.virtkit("exec", TAKEN, "--", "nosuchcmd"), 127, "nosuchcmd: command not found in")
    assert_clear_error(host.virtkit("exec", TAKEN, "--", "/etc"), 126, "/etc: is a directory")
    assert_clear_error(
        host.virtkit("exec", TAKEN, "--", "/etc/passwd"), 126, "/etc/passwd: is not executable"
    )
