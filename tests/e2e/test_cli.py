"""Global behaviour of the `virtkit` command: version, help, options, errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import VIRTKIT, Cli


def assert_clear_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """A user error: the given exit code, one or two lines on stderr, no traceback, nothing on stdout."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for needle in needles:
        assert needle in result.stderr


def test_version(virtkit: Cli) -> None:
    result = virtkit("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "virtkit 0.1.0"


def test_python_dash_m(state_root: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "virtkit", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("virtkit ")


def test_help_groups_commands_by_section(virtkit: Cli) -> None:
    result = virtkit("--help")
    assert result.returncode == 0
    for section in ("Instances:", "Host:", "Server:"):
        assert section in result.stdout
    for option in ("--root", "--json", "--debug"):
        assert option in result.stdout
    assert result.stdout.index("Instances:") < result.stdout.index("  list")


def test_version_and_help_import_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from virtkit.cli.main import main\n"
        "for args in (['--version'], ['--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "light = ('pydantic', 'fastapi', 'pyroute2', 'rich', 'sqlite3', 'virtkit.store', 'virtkit.host')\n"
        "heavy = [m for m in light if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unknown_command_is_a_usage_error(virtkit: Cli) -> None:
    result = virtkit("frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr
    assert "Traceback" not in result.stderr


def test_list_on_a_fresh_root_is_empty(virtkit: Cli, state_root: Path) -> None:
    result = virtkit("list")
    assert result.returncode == 0, result.stderr
    assert "No instances" in result.stdout
    assert (state_root / "virtkit.db").exists()


def test_json_is_global_and_per_command(virtkit: Cli) -> None:
    for args in (["--json", "list"], ["list", "--json"]):
        result = virtkit(*args)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == []


def test_root_with_missing_parent_creates_nothing(virtkit: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "readonly"
    result = virtkit("--root", str(missing), "list")
    assert_clear_error(result, 1, str(missing))
    assert not (tmp_path / "nonexistent").exists()


def test_root_nonexistent_readonly_literal(virtkit: Cli) -> None:
    result = virtkit("--root", "/nonexistent/readonly", "list")
    assert_clear_error(result, 1, "/nonexistent")
    assert not Path("/nonexistent").exists()


def test_root_that_is_a_file(virtkit: Cli, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    result = virtkit("--root", str(a_file), "list")
    assert result.returncode == 2  # click refuses a file where a directory is wanted
    assert "Traceback" not in result.stderr
    assert a_file.read_text() == "not a directory"


def test_invalid_instance_name(virtkit: Cli, state_root: Path) -> None:
    for bad in ("Bad_Name", "a" * 64, "../../etc/passwd", "web\nnext", ""):
        result = virtkit("show", bad)
        assert_clear_error(result, 2, "invalid instance name")
    assert_clear_error(virtkit("show", "--", "-x"), 2, "invalid instance name")
    assert not (state_root / "instances").exists()


def test_missing_instance(virtkit: Cli) -> None:
    assert_clear_error(virtkit("show", "web1"), 1, "instance 'web1' not found")


def test_invalid_operation_id(virtkit: Cli) -> None:
    assert_clear_error(virtkit("operation", "show", "not-a-uuid"), 2, "invalid operation id")
    missing = "0b1c2d3e-0000-4000-8000-000000000000"
    assert_clear_error(virtkit("operation", "show", missing), 1, missing)


def test_operation_list_empty(virtkit: Cli) -> None:
    result = virtkit("operation", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_debug_shows_traceback_for_errors(virtkit: Cli) -> None:
    result = virtkit("--debug", "show", "web1")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "Error: instance 'web1' not found" in result.stderr


def test_console_script_is_installed() -> None:
    assert VIRTKIT.exists()
