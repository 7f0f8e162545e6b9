"""The containers.live-migration line of `virtkit host check` (host/criu.py)."""

from __future__ import annotations

from pathlib import Path

from virtkit.host.checks import Status
from virtkit.host.criu import criu_check


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "criu"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_without_criu_containers_move_cold() -> None:
    check = criu_check(lambda _name: None)
    assert check.status is Status.INFO and "not installed" in check.summary and check.remedy


def test_a_criu_that_fails_its_own_check_says_why(tmp_path: Path) -> None:
    path = script(tmp_path, "echo 'Error: seccomp filters not supported' >&2; exit 1")
    check = criu_check(lambda _name: path)
    assert check.status is Status.INFO and "seccomp filters not supported" in check.summary


def test_a_working_criu_passes(tmp_path: Path) -> None:
    path = script(tmp_path, "echo Looks good.")
    assert criu_check(lambda _name: path).status is Status.PASS


def test_a_criu_that_cannot_run_is_not_trusted(tmp_path: Path) -> None:
    check = criu_check(lambda _name: str(tmp_path / "missing"))
    assert check.status is Status.INFO and "failed to run" in check.summary
