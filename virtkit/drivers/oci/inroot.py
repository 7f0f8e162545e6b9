"""Paths inside an image's or a container's tree, looked up from the host the way the container
would see them: every symlink resolved inside the tree (an absolute target starts again at its root,
`..` stops there), so a hostile image's links never lead to the host's files.

For reading a few files at plan time (the command to run, the image's passwd). Opening files a
running container can change under us goes through openat2(RESOLVE_IN_ROOT) instead (files.py).
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_LINKS = 40  # symlinks followed in one lookup, as the kernel's own limit


def resolve(rootfs: Path, path: str) -> Path | None:
    """`path` inside `rootfs` with every symlink resolved inside it (None: a dangling link or a loop)."""
    parts = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = rootfs.joinpath(*done, part)
        if here.is_symlink():
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        done.append(part)
    return rootfs.joinpath(*done)
