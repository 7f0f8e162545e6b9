"""A running container's cold move pre-copies it (ops/moveprecopy.py): what it changes while the
pre-copy is sent (new, changed and deleted files) reaches the destination in the difference sent
once it is stopped, and the move's snapshot is gone on both sides."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.conftest import tiny_template  # noqa: F401  (the fixture)
from tests.fixtures.hosts import Hosts, hosts  # noqa: F401  (the fixture)
from virtkit.api.streams import Streams
from virtkit.ops.movecold import ColdMove
from virtkit.ops.movedest import ApiDestination
from virtkit.store import open_store

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")]

BEFORE = "cd /root; echo kept > kept; echo old > changed; echo doomed > doomed; mkdir d"
DURING = "cd /root; echo new > changed; rm doomed; echo late > d/late; ln -s kept link"
LISTING = "cd /root; for f in kept changed doomed link d/late; do echo $f: $(cat $f || echo -); done"


def test_changes_made_during_the_pre_copy_arrive_with_the_difference(hosts: Hosts) -> None:  # noqa: F811
    a, b = hosts(2)
    a.ok("launch", "tiny", "c1", "--container", "--wait", timeout=120)
    a.ok("exec", "c1", "--", "sh", "-c", BEFORE)
    phases: list[str] = []

    def said(phase: str, _seconds: float) -> None:
        phases.append(phase)
        if phase == "precopy":  # the pre-copy is there; the container still runs here
            a.ok("exec", "c1", "--", "sh", "-c", DURING)

    with a.inside(), Streams(b.url, token=b.token, certificate=b.cert) as streams:
        store = open_store(a.root)
        try:
            moved = ColdMove(a.root, store, ApiDestination(streams), "b", said=said).move("c1")
        finally:
            store.close()
    assert phases == ["precopy", "stop", "transfer", "start", "remove"]
    assert moved.precopy_bytes > moved.bytes > 0 and moved.downtime_s is not None
    print(f"pre-copy {moved.precopy_bytes} bytes, then {moved.bytes} bytes in a downtime of "
          f"{moved.downtime_s:.2f} s ({moved.phases})")  # fmt: skip
    listing = b.ok("exec", "c1", "--", "sh", "-c", LISTING)
    assert listing.splitlines() == ["kept: kept", "changed: new", "doomed: -", "link: kept", "d/late: late"]
    assert json.loads(b.ok("snapshot", "list", "c1", "--json")) == []
    assert json.loads(a.ok("list", "--json")) == []
