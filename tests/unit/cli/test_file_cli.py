"""`virtkit file`'s NAME/PATH argument: incus's form and docker's."""

from __future__ import annotations

import pytest

from virtkit.cli.file import split_target
from virtkit.errors import SpecError


def test_both_forms() -> None:
    assert split_target("c1/etc/hosts") == ("c1", "/etc/hosts")
    assert split_target("c1:/etc/hosts") == ("c1", "/etc/hosts")
    assert split_target("c1/etc/a:b") == ("c1", "/etc/a:b")
    assert split_target("c1:etc/hosts") == ("c1", "etc/hosts")  # refused by the op: not absolute
    assert split_target("c1/") == ("c1", "/")


@pytest.mark.parametrize("text", ["c1", "/etc/hosts", ":/etc", ""])
def test_no_instance_or_no_path(text: str) -> None:
    with pytest.raises(SpecError, match="expected NAME/PATH"):
        split_target(text)


def test_the_name_is_checked() -> None:
    with pytest.raises(SpecError, match="invalid instance name"):
        split_target("Bad_Name/etc/hosts")
