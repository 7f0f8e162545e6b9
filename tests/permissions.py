"""Test directories QEMU's unprivileged user can reach, as it can /var/lib/virtkit."""

from __future__ import annotations

from pathlib import Path


def reachable(path: Path) -> Path:
    """`path`, with every directory above it enterable by others (o+x, not readable).

    pytest's own directory is mode 0700 (pytest tightens it again itself at its next run).
    """
    for directory in path.parents:
        if directory == Path("/"):
            break
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod((mode & 0o7777) | 0o711)
    return path
