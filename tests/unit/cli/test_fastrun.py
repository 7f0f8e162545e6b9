"""`virtkit run`'s lean parser reads exactly what the click command reads, and hands the rest over."""

from __future__ import annotations

import ast
import subprocess
import sys

import click
import pytest

from virtkit.cli import fastrun
from virtkit.cli.run import run_command
from virtkit.errors import SpecError
from virtkit.ops.run import RunRequest

SAME = [
    ["run", "--rm", "tiny", "--", "true"],
    ["run", "tiny", "true"],
    ["--root", "/r", "run", "--rm", "--name", "x1", "tiny", "--", "sh", "-c", "exit 3"],
    ["--root=/r", "run", "--name=x1", "--cpus", "0.5", "--memory", "64MiB", "tiny", "--", "ls", "-l"],
    ["run", "-e", "A=1", "--env", "B=2", "--env=C=3", "-w", "/tmp", "--workdir=/etc", "tiny", "pwd"],
    ["run", "--processes", "50", "-t", "--tty", "tiny", "--", "--", "x"],
    ["run", "--cpu-set", "0", "--privileged", "--cpu-set=1", "tiny", "true"],
    ["run", "oci-app"],  # no command: the image's own
    ["run", "--rm", "oci-app", "--"],
    ["run", "--rm", "tiny", "--", "sh", "--rm", "-e", "X"],  # options after IMAGE are the command's
    ["run", "--memory", "1G", "--memory", "2G", "tiny", "true"],  # the last one wins, as click
]
CLICK_ONLY = [
    ["run", "--help"],
    ["run", "-h", "tiny", "true"],
    ["--debug", "run", "tiny", "true"],
    ["--json", "run", "tiny", "true"],
    ["run", "--rm"],
    ["run", "--cpus", "lots", "tiny", "true"],
    ["run", "--rm=yes", "tiny", "true"],
    ["run", "-it", "tiny", "sh"],
    ["run", "--name"],
    ["exec", "c1", "--", "run"],
    ["list"],
]


def _clicked(argv: list[str]) -> RunRequest:
    """What the click command would run for `argv` (global --root stripped)."""
    seen: list[RunRequest] = []
    args = argv[argv.index("run") + 1 :]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastrun, "execute", lambda _root, request: seen.append(request) or 0)
        with pytest.raises(SystemExit):
            run_command.main(args=args, prog_name="virtkit run", standalone_mode=False)
    return seen[0]


@pytest.mark.parametrize("argv", SAME, ids=" ".join)
def test_the_lean_parser_reads_what_click_reads(argv: list[str]) -> None:
    parsed = fastrun.parse(argv)
    assert parsed is not None
    _root, options = parsed
    assert ast.literal_eval(repr(options)) == options  # plain values: they travel to the runner
    assert fastrun.request_from(options) == _clicked(argv)


def test_the_state_root_comes_from_the_option_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRTKIT_ROOT", "/from/env")
    assert fastrun.parse(["run", "tiny", "true"])[0] == "/from/env"  # type: ignore[index]
    assert fastrun.parse(["--root", "/opt", "run", "tiny", "true"])[0] == "/opt"  # type: ignore[index]


@pytest.mark.parametrize("argv", CLICK_ONLY, ids=" ".join)
def test_anything_else_goes_to_click(argv: list[str]) -> None:
    assert fastrun.parse(argv) is None


BAD_VALUES = [
    ["run", "--memory", "-5", "tiny", "true"],
    ["run", "--name", "../x", "tiny", "x"],
    ["run", "--memory", "lots", "tiny", "true"],
]


@pytest.mark.parametrize("argv", BAD_VALUES, ids=" ".join)
def test_bad_names_and_sizes_get_click_s_message_and_status(argv: list[str]) -> None:
    parsed = fastrun.parse(argv)
    assert parsed is not None
    with pytest.raises(SpecError) as lean:
        fastrun.request_from(parsed[1])
    with pytest.raises(SpecError) as clicked:
        _clicked(argv)
    assert (lean.value.message, lean.value.exit_code) == (clicked.value.message, 2)


def test_click_reports_what_the_lean_parser_would_not_take() -> None:
    with pytest.raises(click.BadParameter):
        run_command.main(args=["--cpus", "lots", "tiny", "true"], standalone_mode=False)


def test_the_lean_path_imports_neither_click_nor_pydantic_nor_rich() -> None:
    code = ("import sys; import virtkit.cli.entry, virtkit.cli.fastrun, virtkit.ops.run; "
            "print(sorted(m for m in ('click', 'pydantic', 'rich', 'virtkit.model', 'subprocess', 'logging') "
            "if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_handing_a_run_to_the_runner_imports_almost_nothing() -> None:
    code = (
        "import sys; import virtkit.cli.entry, virtkit.cli.fastrun, virtkit.cli.runclient; "
        "print(sorted(m for m in ('pathlib', 're', 'typing', 'enum', 'json', 'socket', 'virtkit.ops.run') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
