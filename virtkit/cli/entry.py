"""The `virtkit` console script: `virtkit run` goes through the lean front door (cli/fastrun.py)
when it can, everything else through the click application (cli/main.py)."""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if "run" in argv[:4]:  # `virtkit [--root DIR] run ...`: worth a look before importing click
        from virtkit.cli.fastrun import main as fast

        code = fast(argv)
        if code is not None:
            sys.exit(code)
    from virtkit.cli.main import main as full

    full(argv)
