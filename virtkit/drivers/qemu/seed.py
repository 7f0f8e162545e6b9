"""A VM's NoCloud seed: cloud-init's instance data on a small read-only ISO9660 volume labelled `cidata`.

cloud-init's NoCloud datasource looks for a filesystem with that label (ISO9660 or vfat) holding
`meta-data` and `user-data`. The seed is made once, when the instance is created (`prepare`), from
what `virtkit.cloudinit` renders; `xorriso` writes it (Rock Ridge and Joliet, so the file names
keep their dashes). It is attached read-only (argv.py `_seed`) and goes with the instance.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from virtkit.images.tools import run_tool

LABEL = "cidata"
XORRISO_TIMEOUT = 60.0


def make_seed(path: Path, files: Mapping[str, bytes]) -> None:
    """Write the seed volume holding `files` (name -> content) to `path`, all or nothing."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".seed-") as work:
        content = Path(work) / "content"
        content.mkdir(mode=0o700)
        for name, data in files.items():
            (content / name).write_bytes(data)
        partial = Path(work) / "seed.iso"
        run_tool(
            ["xorriso", "-as", "mkisofs", "-quiet", "-output", partial, "-volid", LABEL,
             "-joliet", "-rational-rock", content],
            timeout=XORRISO_TIMEOUT, what="making the cloud-init seed", package="xorriso",
        )  # fmt: skip
        # Readable by QEMU's unprivileged user; user-data may hold secrets, but the instance
        # directory (no access for others) keeps everyone else out.
        partial.chmod(0o644)
        os.replace(partial, path)
