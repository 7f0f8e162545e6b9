"""A container's uid and gid as the host stores them: through its OCI id mappings, when it has any."""

from __future__ import annotations

import pytest

from virtkit.drivers.oci.files import map_id
from virtkit.errors import SpecError

MAPS = [{"containerID": 0, "hostID": 1000000, "size": 1000},
        {"containerID": 1000, "hostID": 5000000, "size": 64536}]  # fmt: skip


def test_ids_are_mapped() -> None:
    assert map_id(MAPS, 0, "uid", "c1") == 1000000
    assert map_id(MAPS, 999, "uid", "c1") == 1000999
    assert map_id(MAPS, 1000, "uid", "c1") == 5000000
    assert map_id(MAPS, 65535, "gid", "c1") == 5064535


def test_no_user_namespace_keeps_the_id() -> None:
    assert map_id(None, 1234, "uid", "c1") == 1234
    assert map_id([], 0, "uid", "c1") == 0


def test_an_unmapped_id_is_refused() -> None:
    with pytest.raises(SpecError, match="uid 65536 does not exist in c1's user namespace") as caught:
        map_id(MAPS, 65536, "uid", "c1")
    assert caught.value.hint == "its uids are 0-999, 1000-65535"
