"""Tools: version parsing on real outputs, missing tools named with their Debian package, concurrency."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from hosttree import ALL_TOOLS, TOOL_OUTPUTS, fake_run_version, fake_which

from virtkit.host import Check, Status
from virtkit.host.tools import (
    TOOLS,
    parse_version,
    probe_tools,
    qemu_for_arch,
    run_version_command,
    tool_checks,
)

EXPECTED_VERSIONS = {
    "qemu-system-x86_64": "7.2.22",
    "qemu-system-aarch64": "7.2.22",
    "qemu-img": "7.2.22",
    "runc": "1.1.5",
    "crun": "1.8.1",
    "conmon": "2.1.6",
    "nft": "1.0.6",
    "dnsmasq": "2.90",
    "ip": "6.1.0",
    "debootstrap": "1.0.128",
    "skopeo": "1.9.3",
    "umoci": "0.4.7",
    "xorriso": "1.5.4",
    "zstd": "1.5.4",
}


@pytest.mark.parametrize("name", sorted(TOOL_OUTPUTS))
def test_parse_version_of_real_outputs(name: str) -> None:
    assert parse_version(TOOL_OUTPUTS[name]) == EXPECTED_VERSIONS[name]


@pytest.mark.parametrize("text", ["", "usage: foo [options]\n", "ip utility, iproute2-ss200127\n"])
def test_parse_version_without_a_dotted_number(text: str) -> None:
    assert parse_version(text) is None


def by_id(checks: list[Check]) -> dict[str, Check]:
    return {c.id: c for c in checks}


def test_all_present_pass_with_versions() -> None:
    got = by_id(tool_checks(probe_tools(fake_which(ALL_TOOLS), fake_run_version)))
    assert set(got) == {f"tools.{t.name}" for t in TOOLS}
    assert all(c.status is Status.PASS for c in got.values())
    assert got["tools.nft"].details == {
        "path": "/usr/bin/nft",
        "version": "1.0.6",
        "package": "nftables",
        "error": None,
    }


@pytest.mark.parametrize(
    ("missing", "package"),
    [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("qemu-img", "qemu-utils"),
        ("conmon", "conmon"),
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
        ("ip", "iproute2"),
        ("debootstrap", "debootstrap"),
        ("skopeo", "skopeo"),
        ("umoci", "umoci"),
    ],
)
def test_missing_tool_warns_naming_the_debian_package(missing: str, package: str) -> None:
    present = [t for t in ALL_TOOLS if t != missing]
    check = by_id(tool_checks(probe_tools(fake_which(present), fake_run_version)))[f"tools.{missing}"]
    assert check.status is Status.WARN
    assert check.remedy == f"apt-get install {package}"


def test_missing_runtime_is_info_when_the_other_is_present() -> None:
    present = [t for t in ALL_TOOLS if t != "crun"]
    crun = by_id(tool_checks(probe_tools(fake_which(present), fake_run_version)))["tools.crun"]
    assert crun.status is Status.INFO
    assert "runc is used instead" in crun.summary
    neither = [t for t in ALL_TOOLS if t not in ("crun", "runc")]
    got = by_id(tool_checks(probe_tools(fake_which(neither), fake_run_version)))
    assert got["tools.crun"].status is Status.WARN
    assert got["tools.runc"].status is Status.WARN


def test_version_command_failure_warns() -> None:
    def run(argv: list[str]) -> str:
        if argv[0].endswith("/skopeo"):
            raise subprocess.TimeoutExpired(argv, 2.0)
        return fake_run_version(argv)

    skopeo = by_id(tool_checks(probe_tools(fake_which(ALL_TOOLS), run)))["tools.skopeo"]
    assert skopeo.status is Status.WARN
    assert "timed out" in skopeo.summary
    assert skopeo.remedy == "apt-get install --reinstall skopeo"


def test_extra_qemu_targets_reported_only_when_present() -> None:
    which = fake_which([*ALL_TOOLS, "qemu-system-riscv64"])
    got = by_id(tool_checks(probe_tools(which, fake_run_version)))
    assert got["tools.qemu-system-riscv64"].status is Status.PASS
    assert got["tools.qemu-system-riscv64"].details["package"] == "qemu-system-misc"
    assert "tools.qemu-system-s390x" not in got


def test_versions_run_concurrently() -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def slow(argv: list[str]) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.2)
        with lock:
            running -= 1
        return fake_run_version(argv)

    start = time.monotonic()
    results = probe_tools(fake_which(ALL_TOOLS), slow)
    elapsed = time.monotonic() - start
    assert len(results) == len(ALL_TOOLS)
    assert peak > 1
    assert elapsed < 0.2 * len(ALL_TOOLS) / 2  # serial would take 2.4 s


def test_version_is_read_with_the_right_argument() -> None:
    seen: list[list[str]] = []

    def record(argv: list[str]) -> str:
        seen.append(argv)
        return fake_run_version(argv)

    probe_tools(fake_which(["ip", "nft"]), record)
    assert sorted(seen) == [["/usr/bin/ip", "-V"], ["/usr/bin/nft", "--version"]]


@pytest.mark.parametrize(
    ("arch", "binary"),
    [("x86_64", "qemu-system-x86_64"), ("aarch64", "qemu-system-aarch64"), ("i686", "qemu-system-i386")],
)
def test_qemu_for_arch(arch: str, binary: str) -> None:
    assert qemu_for_arch(arch) == binary


def test_run_version_command_on_a_real_program() -> None:
    out = run_version_command([sys.executable, "--version"])
    assert parse_version(out) is not None


def test_run_version_command_times_out() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_version_command(["sleep", "5"], timeout=0.2)
