"""Each container's own range of host ids (idmap.py): subordinate-id files, the first free range,
the ranges other instance directories hold, what a container is given and saves, and the
owners the metacopy walk gives (rootfs.shifted). The host probe is replaced by a fixed answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.permissions import reachable
from virtkit.drivers.base import InstancePaths
from virtkit.drivers.oci import idmap, rootfs
from virtkit.drivers.oci.idmap import FALLBACK, SIZE, IdRange, Support, first_free, parse_subids
from virtkit.drivers.oci.plan import OneShot
from virtkit.drivers.oci.rootfs import Shift, shifted
from virtkit.errors import StoreError

SUBIDS = "# comment\nroot:100000:131072\nalice:231072:65536\n0:500000:65536\nbad line\nroot:x:1\nroot:9:0\n"


def test_root_entries_by_name_or_uid() -> None:
    assert parse_subids(SUBIDS) == [IdRange(100000, 131072), IdRange(500000, 65536)]
    assert parse_subids(SUBIDS, ("alice",)) == [IdRange(231072, 65536)]
    assert parse_subids("") == []


def test_pools_fall_back_to_incus_range_when_root_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    monkeypatch.setattr(idmap, "SUBUID", subuid)
    monkeypatch.setattr(idmap, "SUBGID", subgid)
    uids, gids, source = idmap.pools()  # neither file exists
    assert (uids, gids) == ([FALLBACK], [FALLBACK]) and "1000000:1000000000" in source and "Incus" in source
    subuid.write_text(SUBIDS)
    subgid.write_text("root:300000:65536\n")
    uids, gids, source = idmap.pools()
    assert uids == parse_subids(SUBIDS) and gids == [IdRange(300000, 65536)] and "/etc/subuid" in source


def test_first_free_skips_taken_ranges_and_ids_below_the_size() -> None:
    pool = [IdRange(100000, 3 * SIZE)]
    assert first_free(pool, []) == 100000
    assert first_free(pool, [IdRange(100000, SIZE)]) == 100000 + SIZE
    # a misaligned range held (the subuid file changed): the next range starts where it ends
    assert first_free(pool, [IdRange(100005, SIZE)]) == 100005 + SIZE
    assert first_free(pool, [IdRange(100000 + SIZE, SIZE)]) == 100000  # a hole before it
    assert first_free(pool, [IdRange(100000, 2 * SIZE), IdRange(100000 + 2 * SIZE, 10)]) is None
    assert first_free([IdRange(0, 4 * SIZE)], []) == SIZE  # never the host's own users
    assert first_free([IdRange(100000, 10), IdRange(200000, SIZE)], []) == 200000  # too small first


@given(
    st.lists(st.tuples(st.integers(SIZE, 10 * SIZE), st.integers(1, 3 * SIZE)), max_size=6),
    st.integers(0, 8),
)
def test_first_free_never_overlaps_and_stays_in_the_pool(taken: list[tuple[int, int]], rounds: int) -> None:
    pool = [IdRange(SIZE, 12 * SIZE)]
    held = [IdRange(start, size) for start, size in taken]
    for _ in range(rounds):
        start = first_free(pool, held)
        if start is None:
            break
        wanted = IdRange(start, SIZE)
        assert pool[0].start <= wanted.start and wanted.end <= pool[0].end
        assert not any(wanted.overlaps(h) for h in held)
        held.append(wanted)


def test_shifted_ids() -> None:
    assert shifted(0, 100000, SIZE) == 100000
    assert shifted(33, 100000, SIZE) == 100033
    assert shifted(100033, 100000, SIZE) == 100033  # a hard link's second name: already shifted
    assert shifted(70000, 100000, SIZE) == 100000 + 65534  # beyond the range: nobody
    with pytest.raises(ValueError):
        Shift.from_dict({"uid": 1, "gid": 1, "size": 1, "mode": "copy"})


# --- what a container gets and saves ----------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state root on a host that supports idmapped rootfs, root without subordinate ids."""
    monkeypatch.setattr(idmap, "SUBUID", tmp_path / "none")
    monkeypatch.setattr(idmap, "SUBGID", tmp_path / "none")
    monkeypatch.setattr(idmap, "host_support", lambda _dir: Support(rootfs.IDMAPPED))
    root = reachable(tmp_path / "root")
    (root / "locks").mkdir(parents=True)
    root.chmod(0o711)
    return root


def _new(root: Path, name: str, **config: str) -> tuple[OneShot, InstancePaths]:
    paths = InstancePaths.of(root, name)
    paths.dir.mkdir(parents=True)
    paths.dir.parent.chmod(0o755)
    return OneShot(name, "7c9e6679-7425-40de-944b-e07fc1f90ae7", 1.0, 64 << 20, dict(config)), paths


def test_each_container_gets_its_own_range_for_life(host: Path) -> None:
    one, one_paths = _new(host, "c1")
    preview = idmap.plan(OneShot("c1", "x", 1.0, 1, {}), InstancePaths.of(host, "c0"))
    first = idmap.allocate(one, one_paths).shift
    assert first == preview.shift == Shift(FALLBACK.start, FALLBACK.start, SIZE, rootfs.IDMAPPED)
    assert json.loads((one_paths.dir / "idmap").read_text())["uid"] == FALLBACK.start
    two, two_paths = _new(host, "c2")
    second = idmap.allocate(two, two_paths).shift
    assert second is not None and second.uid == second.gid == FALLBACK.start + SIZE
    assert idmap.plan(one, one_paths).shift == first  # read back, every generate
    assert idmap.plan(OneShot("c3", "x", 1.0, 1, {}), InstancePaths.of(host, "c3")).shift == Shift(
        FALLBACK.start + 2 * SIZE, FALLBACK.start + 2 * SIZE, SIZE, rootfs.IDMAPPED
    )  # a preview shows the first free one, and reserves nothing
    assert (
        idmap.held(host / "instances")
        == ([IdRange(FALLBACK.start, SIZE), IdRange(FALLBACK.start + SIZE, SIZE)],) * 2
    )


def test_opting_out_and_older_containers_have_no_user_namespace(host: Path) -> None:
    out, out_paths = _new(host, "plain", idmap="host")
    assert idmap.allocate(out, out_paths) == idmap.Choice(None)
    assert idmap.plan(out, out_paths).shift is None
    old, old_paths = _new(host, "old")  # made before ids were mapped: a directory, no idmap file
    assert idmap.plan(old, old_paths) == idmap.Choice(None)
    one, one_paths = _new(host, "c1")
    assert idmap.allocate(one, one_paths).shift is not None
    assert idmap.plan(OneShot("c1", "x", 1.0, 1, {"idmap": "host"}), one_paths).shift is not None  # for life


def test_a_host_without_user_namespaces_says_why(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idmap, "host_support", lambda _dir: Support(None, "max_user_namespaces is 0"))
    one, paths = _new(host, "c1")
    choice = idmap.allocate(one, paths)
    assert choice.shift is None
    notice = idmap.plan(one, paths).notice("c1")
    assert "c1 runs without a user namespace: max_user_namespaces is 0" in notice
    assert "root in it is root on the host" in notice


def test_a_state_root_the_container_cannot_enter(host: Path) -> None:
    one, paths = _new(host, "c1")
    paths.dir.parent.chmod(0o750)  # instances/ made private: the mapped root cannot reach its rootfs
    choice = idmap.allocate(one, paths)
    assert choice.shift is None and f"cannot enter {paths.dir.parent} (mode 0750)" in choice.why


def test_a_damaged_range_file_is_an_error_not_a_free_range(host: Path) -> None:
    _one, paths = _new(host, "c1")
    (paths.dir / "idmap").write_text("{not json")
    two, two_paths = _new(host, "c2")
    with pytest.raises(StoreError, match="cannot read the container's id range"):
        idmap.allocate(two, two_paths)


def test_host_check_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(idmap, "SUBUID", tmp_path / "none")
    monkeypatch.setattr(idmap, "SUBGID", tmp_path / "none")
    monkeypatch.setattr(idmap, "host_support", lambda _dir: Support(rootfs.IDMAPPED))
    ok, detail = idmap.check_host(tmp_path)
    assert ok and "Incus" in detail and "idmapped mount" in detail and "room for 15258" in detail
    monkeypatch.setattr(
        idmap, "host_support", lambda _dir: Support(None, "/proc/sys/user/max_user_namespaces is 0")
    )
    ok, detail = idmap.check_host(tmp_path)
    assert not ok and "max_user_namespaces is 0" in detail and "run without user namespaces" in detail
