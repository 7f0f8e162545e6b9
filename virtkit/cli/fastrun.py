"""The lean front door of `virtkit run`: its command line parsed without click, so that
`virtkit run --rm tiny -- true` costs a Python start, a few stdlib imports and runc — nothing more.

It knows exactly the grammar of cli/run.py (the documented command): global `--root DIR`, then the
run options, IMAGE, and the command (after an optional `--`). Whatever else it meets — --help, an
option or a spelling it does not know, a --cpus that is not a number — it returns None for, and the
click command takes over. Names and sizes are checked by the same functions click's parameter
types use (units.py), with the same message and exit status 2, but later: by whoever runs the
request (this process or the warm runner), so that handing a request over imports neither pathlib
nor re nor typing (`runclient.py`).
"""

from __future__ import annotations

import os
import sys

from virtkit.cli.basics import default_root, report_error
from virtkit.errors import CommandNotExecutableError, CommandNotFoundError, SpecError, VirtkitError

TYPE_CHECKING = False  # typing itself is one import too many here; mypy takes the name as typing's
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from virtkit.ops.run import RunRequest

DEFAULT_MEMORY = 256 << 20  # as the click command's --memory default
CANNOT_RUN = 125  # as podman and docker: virtkit itself could not run the container
_FLAGS = {"--rm": "remove", "--tty": "tty", "-t": "tty", "--privileged": "privileged"}
_VALUES = {"--name": "name", "--cpus": "cpus", "--memory": "memory", "--processes": "processes",
           "--env": "env", "-e": "env", "--workdir": "workdir", "-w": "workdir",
           "--cpu-set": "cpu_set"}  # fmt: skip


def parse(argv: list[str]) -> tuple[str, dict[str, Any]] | None:
    """The state root and the run options `argv` (without the program name) asks for, as plain
    values (they may travel to the warm runner; names and sizes still unchecked: `request_from`),
    or None: not a plain `virtkit run`, let click read it."""
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
    root = os.path.abspath(root)  # runc takes the bundle's paths from its own directory
    options = _options(args[1:])
    if options is None:
        return None
    values, rest = options
    if not rest:
        return None
    try:
        cpus = float(values["cpus"][-1]) if "cpus" in values else 1.0
    except ValueError:
        return None  # click's message for a value that is not a number
    last = {key: found[-1] for key, found in values.items() if found}
    return root, {
        "image": rest[0], "command": rest[2:] if rest[1:2] == ["--"] else rest[1:],
        "remove": "remove" in values, "tty": "tty" in values, "privileged": "privileged" in values,
        "name": last.get("name"), "cpus": cpus, "memory": last.get("memory"),
        "processes": last.get("processes"), "env": values.get("env", []), "workdir": last.get("workdir"),
        "cpu_set": last.get("cpu_set"),
    }  # fmt: skip


def request_from(options: dict[str, Any]) -> RunRequest:
    """The op's request for parsed options: SpecError for a name or size click would refuse."""
    from virtkit.ops.run import RunRequest
    from virtkit.units import parse_size, validate_name

    values = dict(options)
    values["command"], values["env"] = tuple(values["command"]), tuple(values["env"])
    if values["name"] is not None:
        values["name"] = validate_name(values["name"])
    memory = values["memory"]
    values["memory"] = DEFAULT_MEMORY if memory is None else parse_size(memory, what="memory size")
    return RunRequest(**values)


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


def run_options(root: str, options: dict[str, Any]) -> int:
    """Check and run parsed options; the exit status `virtkit run` ends with (2: a bad name or
    size, as click's parameter types would say)."""
    try:
        request = request_from(options)
    except SpecError as error:
        report_error(error)
        return error.exit_code
    from pathlib import Path

    return execute(Path(root), request)


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
    except Exception as error:  # as cli/main.py: a bug, said in two lines, never a traceback
        sys.stderr.write(f"Error: internal error: {type(error).__name__}: {error}\n"
                         "Hint: rerun with --debug for the traceback, and report it as a bug\n")  # fmt: skip
        return CANNOT_RUN


def main(argv: list[str]) -> int | None:
    """`virtkit run` the lean way: its exit status, or None when click must read this command line.

    With --rm, the state root's warm runner (cli/runner.py) runs it when there is one; else this
    process does, and starts a runner for the next time."""
    parsed = parse(argv)
    if parsed is None:
        return None
    root, options = parsed
    if not options["remove"]:
        return run_options(root, options)
    from virtkit.cli import runclient

    code = runclient.run(root, options)
    if code is not None:
        return code
    code = run_options(root, options)
    if runclient.can_serve(root):
        runclient.start_runner(root)
    return code
