"""The lean front door of `virtkit run`: its command line parsed without click, so that
`virtkit run --rm tiny -- true` costs a Python start, a few stdlib imports and runc — nothing more.

It knows exactly the grammar of cli/run.py (the documented command): global `--root DIR`, then the
run options, IMAGE, and the command (after an optional `--`). Whatever else it meets — --help, an
option or a spelling it does not know, a value it cannot convert — it returns None for, and the
click command takes over, so every error message about the command line is click's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from virtkit.cli.basics import default_root, report_error
from virtkit.errors import CommandNotExecutableError, CommandNotFoundError, SpecError, VirtkitError
from virtkit.ops.run import RunRequest
from virtkit.units import parse_size, validate_name

CANNOT_RUN = 125  # as podman and docker: virtkit itself could not run the container
_FLAGS = {"--rm": "remove", "--tty": "tty", "-t": "tty", "--privileged": "privileged"}
_VALUES = {"--name": "name", "--cpus": "cpus", "--memory": "memory", "--processes": "processes",
           "--env": "env", "-e": "env", "--workdir": "workdir", "-w": "workdir",
           "--cpu-set": "cpu_set"}  # fmt: skip


def parse(argv: list[str]) -> tuple[Path, RunRequest] | None:
    """The state root and the request `argv` (without the program name) asks for, or None: not a
    plain `virtkit run`, let click read it."""
    root, args = default_root(), list(argv)
    while args and args[0] != "run":
        if args[0] == "--root" and len(args) > 1:
            root, args = args[1], args[2:]
        elif args[0].startswith("--root="):
            root, args = args[0][7:], args[1:]
        else:
            return None
    if not args or not root:
        return None
    options = _options(args[1:])
    if options is None:
        return None
    values, rest = options
    if not rest:
        return None
    command = rest[2:] if rest[1:2] == ["--"] else rest[1:]
    try:
        request = RunRequest(
            image=rest[0], command=tuple(command), remove="remove" in values, tty="tty" in values,
            name=validate_name(values["name"][-1]) if "name" in values else None,
            cpus=float(values["cpus"][-1]) if "cpus" in values else 1.0,
            memory=parse_size(values["memory"][-1], what="memory size") if "memory" in values else 256 << 20,
            processes=values["processes"][-1] if "processes" in values else None,
            env=tuple(values.get("env", ())), workdir=values["workdir"][-1] if "workdir" in values else None,
            cpu_set=values["cpu_set"][-1] if "cpu_set" in values else None, privileged="privileged" in values,
        )  # fmt: skip
    except (SpecError, ValueError):
        return None  # click says what is wrong with it, the same way as for every other command
    return Path(root), request


def _options(args: list[str]) -> tuple[dict[str, list[str]], list[str]] | None:
    """The run options (by destination, every value given) and what follows them (IMAGE ...)."""
    values: dict[str, list[str]] = {}
    while args and args[0].startswith("-"):
        word = args.pop(0)
        if word == "--":
            break
        key, _, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if key in _FLAGS and not inline:
            values[_FLAGS[key]] = []
        elif key in _VALUES and (inline or args):
            values.setdefault(_VALUES[key], []).append(inline or args.pop(0))
        else:
            return None
    return values, args


def execute(root: Path, request: RunRequest) -> int:
    """Run the request; the exit status `virtkit run` ends with."""
    from virtkit.ops.run import run

    try:
        return run(root, request)
    except (CommandNotFoundError, CommandNotExecutableError) as error:
        report_error(error)
        return error.exit_code
    except VirtkitError as error:
        report_error(error)
        return CANNOT_RUN
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        return 130


def main(argv: list[str]) -> int | None:
    """`virtkit run` the lean way: its exit status, or None when click must read this command line."""
    parsed = parse(argv)
    if parsed is None:
        return None
    return execute(*parsed)
