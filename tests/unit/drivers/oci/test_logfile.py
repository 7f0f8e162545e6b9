"""The k8s-file log decoder gives back what the container wrote, however the log is cut into pieces."""

from __future__ import annotations

from virtkit.drivers.oci.logfile import LogDecoder

LOG = (b"2026-12-02T04:21:53.684178192+00:00 stdout F hello world\n"
       b"2026-12-02T04:21:53.7+00:00 stderr P no newline \n"
       b"2026-12-02T04:21:53.8+00:00 stderr F yet\n"
       b"2026-12-02T04:21:53.9+00:00 stdout F \n"
       b"2026-12-02T04:21:54.0+00:00 stdout F  two  spaces \n")  # fmt: skip
TEXT = b"hello world\nno newline yet\n\n two  spaces \n"


def test_whole() -> None:
    assert LogDecoder()(LOG) == TEXT


def test_in_every_split() -> None:
    for cut in range(len(LOG) + 1):
        decode = LogDecoder()
        assert decode(LOG[:cut]) + decode(LOG[cut:]) == TEXT


def test_an_unfinished_line_waits_for_its_end() -> None:
    decode = LogDecoder()
    assert decode(b"2026-12-02T04:21:53+00:00 stdout F half") == b""
    assert decode(b" done\n") == b"half done\n"


def test_foreign_lines_are_kept() -> None:
    assert LogDecoder()(b"garbage\n\n") == b"garbage\n\n"
