"""conmon's container log (k8s-file format) turned back into what the container wrote.

Each line is `TIMESTAMP STREAM TAG TEXT`: STREAM is stdout or stderr, TAG is F for a full line (its
newline was taken off) or P for a partial one (the text continues on the next line with no newline
in between). The decoder is fed the log in pieces as it grows and keeps an unfinished line for the
next piece, so `virtkit logs -f` can print as the file is written.
"""

from __future__ import annotations


class LogDecoder:
    """Feed it the log's bytes in order; it returns the container's output they complete."""

    def __init__(self) -> None:
        self._tail = b""

    def __call__(self, data: bytes) -> bytes:
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        return b"".join(_text(line) for line in lines)


def _text(line: bytes) -> bytes:
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
        return line + b"\n"  # not conmon's: shown as it is rather than lost
    text = parts[3] if len(parts) == 4 else b""
    return text if parts[2] == b"P" else text + b"\n"
