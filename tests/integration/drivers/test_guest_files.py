"""guestfiles' push and pull through both agents, each run on this host (no VM): the tiny image's
agent script under busybox (its EXEC carries the chunks) and Debian's real qemu-guest-agent
(guest-file-*). The "guest" is this host, so every path is in a scratch directory."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.drivers.test_agent_script import BUSYBOX, agent  # noqa: F401  (fixture)
from tests.integration.drivers.test_guest_agent import qga  # noqa: F401  (fixture)
from virtkit.drivers.qemu import guestfiles
from virtkit.drivers.qemu.agent import QGA_PORT
from virtkit.errors import ConflictError, NotFoundError, SpecError, VirtkitError

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")]


@pytest.fixture(params=["tiny", "qga"])
def link(request: pytest.FixtureRequest) -> Iterator[guestfiles.GuestLink]:
    if request.param == "tiny":
        if BUSYBOX is None:
            pytest.skip("needs busybox (busybox-static)")
        with guestfiles.open_link("org.virtkit.agent", request.getfixturevalue("agent")) as opened:
            yield opened
    else:
        with guestfiles.open_link(QGA_PORT, request.getfixturevalue("qga")) as opened:
            yield opened


@pytest.fixture
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guest")


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".virtkit-push.")]


def test_round_trip_owner_and_mode(link: guestfiles.GuestLink, work: Path) -> None:
    data = os.urandom(guestfiles.CHUNK * 2 + 12345)  # several chunks and a short one
    target = work / "data.bin"
    written = guestfiles.push(link, "vm1", str(target), io.BytesIO(data), size=len(data),
                              uid=1234, gid=99, mode=0o4750)  # fmt: skip
    assert written == len(data) and target.read_bytes() == data
    info = os.stat(target)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1234, 99, 0o4750)
    out = io.BytesIO()
    assert guestfiles.pull(link, "vm1", str(target), out) == len(data)
    assert out.getvalue() == data
    empty = work / "empty"
    guestfiles.push(link, "vm1", str(empty), io.BytesIO(b""), size=None, uid=0, gid=0, mode=0o644)
    assert empty.read_bytes() == b"" and guestfiles.pull(link, "vm1", str(empty), io.BytesIO()) == 0
    assert _leftovers(work) == []


def test_a_symlink_at_the_target_is_replaced(link: guestfiles.GuestLink, work: Path) -> None:
    (work / "real").write_bytes(b"untouched")
    (work / "dir").mkdir()
    (work / "link").symlink_to(work / "real")
    (work / "dirlink").symlink_to(work / "dir")
    for name in ("link", "dirlink"):
        guestfiles.push(link, "vm1", str(work / name), io.BytesIO(b"new"), size=3, uid=0, gid=0, mode=0o644)
        assert not (work / name).is_symlink() and (work / name).read_bytes() == b"new"
    assert (work / "real").read_bytes() == b"untouched" and list((work / "dir").iterdir()) == []


def test_what_is_refused(link: guestfiles.GuestLink, work: Path) -> None:
    (work / "dir").mkdir()
    os.mkfifo(work / "fifo")

    def push(path: Path) -> None:
        guestfiles.push(link, "vm1", str(path), io.BytesIO(b"x"), size=1, uid=0, gid=0, mode=0o644)

    with pytest.raises(ConflictError, match="is a directory: a file cannot replace it"):
        push(work / "dir")
    with pytest.raises(NotFoundError, match="its directory does not exist"):
        push(work / "nodir" / "x")
    with pytest.raises(SpecError, match="is a directory: only regular files"):
        guestfiles.pull(link, "vm1", str(work / "dir"), io.BytesIO())
    with pytest.raises(SpecError, match=r"is not a regular file \(fifo\)"):
        guestfiles.pull(link, "vm1", str(work / "fifo"), io.BytesIO())
    with pytest.raises(NotFoundError, match="no such file"):
        guestfiles.pull(link, "vm1", str(work / "missing"), io.BytesIO())
    assert _leftovers(work) == []


def test_the_size_limit(link: guestfiles.GuestLink, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guestfiles, "MAX_SIZE", 10)
    monkeypatch.setattr(guestfiles, "CHUNK", 4)
    for size in (11, None):  # None: a pipe, found out while sending
        with pytest.raises(SpecError, match="limited to 10B"):
            guestfiles.push(link, "vm1", str(work / "big"), io.BytesIO(b"x" * 11), size=size,
                            uid=0, gid=0, mode=0o644)  # fmt: skip
    assert not (work / "big").exists() and _leftovers(work) == []
    (work / "big").write_bytes(b"x" * 11)
    with pytest.raises(SpecError, match="is 11B: files copied through vm1's guest agent are limited"):
        guestfiles.pull(link, "vm1", str(work / "big"), io.BytesIO())


def test_a_failing_source_leaves_nothing(link: guestfiles.GuestLink, work: Path) -> None:
    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def read(self, size: int = -1, /) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise VirtkitError("cannot read standard input: gone")
            return b"x" * size

    (work / "keep").write_bytes(b"old")
    with pytest.raises(VirtkitError, match="gone"):
        guestfiles.push(link, "vm1", str(work / "keep"), Failing(), size=None, uid=0, gid=0, mode=0o644)
    assert (work / "keep").read_bytes() == b"old" and _leftovers(work) == []
